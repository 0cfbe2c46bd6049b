"""The same seed gives bit-for-bit the same initial weights at every TP/PP layout: each parameter's
tensor-parallel shards, put back together along their split dimension, equal the single process's."""

import subprocess

import pytest
import torch
from launch import REPO, subprocess_env, torchrun_cmd

ARGS = ["--model-preset", "tiny-gqa", "--mock-data", "--device", "cpu", "--train-iters", "1",
        "--global-batch-size", "4", "--seed", "7"]


def full_weights(tmp_path, nproc: int, extra: list) -> dict:
    """global parameter name -> the whole tensor, reassembled from the ranks' shards."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    prefix = tmp_path / "init"
    cmd = torchrun_cmd(nproc, str(REPO / "tests/training/init_worker.py")) + [str(prefix)] + [str(a) for a in ARGS + extra]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    pieces: dict = {}
    for rank in range(nproc):
        for name, shard in torch.load(tmp_path / f"init.{rank}.pt", weights_only=True).items():
            by_tp = pieces.setdefault(name, {})
            if shard["tp_rank"] in by_tp:  # the same shard again on another pipeline stage (tied embedding)
                assert torch.equal(by_tp[shard["tp_rank"]][0], shard["data"]), f"{name}: copies differ"
            by_tp[shard["tp_rank"]] = (shard["data"], shard["partition_dim"])
    full = {}
    for name, by_tp in pieces.items():
        shards = [by_tp[r] for r in sorted(by_tp)]
        dim = shards[0][1]
        if dim < 0:  # replicated across TP (norm gains): every copy must be the same
            assert all(torch.equal(shards[0][0], s) for s, _ in shards), f"{name}: TP copies differ"
            full[name] = shards[0][0]
        elif ".linear_fc1." in name:  # SwiGLU's fused fc1: each rank holds [its gate rows; its up rows]
            halves = [s.chunk(2, dim=0) for s, _ in shards]
            full[name] = torch.cat([g for g, _ in halves] + [u for _, u in halves], dim=0)
        else:  # megatron's fused QKV is grouped per query group, so whole groups sit on each rank
            full[name] = torch.cat([s for s, _ in shards], dim=dim)
    return full


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return full_weights(tmp_path_factory.mktemp("single"), 1, [])


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", 2]),
    "pp2": (2, ["--pipeline-model-parallel-size", 2]),
    "pp2-virtual": (2, ["--pipeline-model-parallel-size", 2, "--num-layers-per-virtual-pipeline-stage", 1]),
    "tp2xpp2": (4, ["--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_init_is_layout_independent(layout, single, tmp_path):
    nproc, extra = LAYOUTS[layout]
    parallel = full_weights(tmp_path, nproc, extra)
    assert set(parallel) == set(single)
    for name, tensor in single.items():
        assert parallel[name].shape == tensor.shape, name
        assert torch.equal(parallel[name], tensor), f"{layout}: {name} differs from the single process's"


def test_init_depends_on_seed(single, tmp_path):
    other = full_weights(tmp_path, 1, ["--seed", "8"])
    random = [name for name in single if "layernorm" not in name]
    assert random and all(not torch.equal(single[name], other[name]) for name in random)
