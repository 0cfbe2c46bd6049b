"""The same seed gives the same initial weights at every TP/PP layout."""

import json
import subprocess

import pytest
from launch import REPO, test_env, torchrun_cmd

ARGS = ["--model-preset", "tiny-gqa", "--mock-data", "--device", "cpu", "--train-iters", "1",
        "--global-batch-size", "4", "--seed", "7"]


def full_weights(tmp_path, nproc: int, extra: list) -> dict:
    """global parameter name -> (sum, sum of squares) of the whole tensor, from per-rank shards."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    prefix = tmp_path / "init"
    cmd = torchrun_cmd(nproc, str(REPO / "tests/training/init_worker.py")) + [str(prefix)] + [str(a) for a in ARGS + extra]
    proc = subprocess.run(cmd, cwd=REPO, env=test_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    totals, seen = {}, set()
    for rank in range(nproc):
        for name, shard in json.loads((tmp_path / f"init.{rank}.json").read_text()).items():
            tag = (name, shard["tp_rank"] if shard["split"] else 0)
            if tag in seen:  # replicated copy (norms on every TP rank, tied embeddings on two stages)
                continue
            seen.add(tag)
            s, q = totals.get(name, (0.0, 0.0))
            totals[name] = (s + shard["sum"], q + shard["sq"])
    return totals


@pytest.mark.parametrize("extra", [["--tensor-model-parallel-size", 2], ["--pipeline-model-parallel-size", 2]],
                         ids=["tp2", "pp2"])
def test_init_is_layout_independent(extra, tmp_path):
    single = full_weights(tmp_path / "single", 1, [])
    parallel = full_weights(tmp_path / "parallel", 2, extra)
    assert set(parallel) == set(single)
    for name, (s, q) in single.items():
        assert parallel[name][0] == pytest.approx(s, rel=1e-9, abs=1e-9), name
        assert parallel[name][1] == pytest.approx(q, rel=1e-9), name


def test_init_depends_on_seed(tmp_path):
    a = full_weights(tmp_path / "a", 1, [])
    b = full_weights(tmp_path / "b", 1, ["--seed", "8"])
    changed = [name for name in a if "layernorm" not in name and a[name] != b[name]]
    assert len(changed) == len([n for n in a if "layernorm" not in n])
