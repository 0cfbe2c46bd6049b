"""Every parallel layout trains exactly like the single process: same fp32 loss at each iteration."""

import json
import subprocess

import pytest
from launch import (REPO, TINY_ARGS, free_port, read_log, read_losses, run_pretrain, start_pretrain, subprocess_env,
                    torchrun_cmd, wait_all)

ITERS = 3
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory):
    log = tmp_path_factory.mktemp("single") / "log.jsonl"
    run_pretrain(TINY_ARGS + ["--train-iters", ITERS, "--log-json", log])
    losses = read_losses(log)
    assert sorted(losses) == list(range(1, ITERS + 1))
    return losses


def assert_same_losses(losses, reference):
    assert sorted(losses) == sorted(reference)
    for it, ref in reference.items():
        assert abs(losses[it] - ref) <= REL_TOL * abs(ref), f"iteration {it}: {losses[it]} vs single {ref}"


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", 2]),
    "pp2": (2, ["--pipeline-model-parallel-size", 2]),
    "pp2-virtual": (2, ["--pipeline-model-parallel-size", 2, "--num-layers-per-virtual-pipeline-stage", 1]),
    "dp2-distributed-optimizer": (2, ["--use-distributed-optimizer"]),
    "dp2-distributed-optimizer-overlapped": (2, ["--use-distributed-optimizer", "--overlap-grad-reduce",
                                                 "--overlap-param-gather"]),
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", 2, "--sequence-parallel"]),
    "tp2xpp2": (4, ["--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, reference_losses, tmp_path):
    nproc, extra = LAYOUTS[layout]
    log = tmp_path / "log.jsonl"
    run_pretrain(TINY_ARGS + ["--train-iters", ITERS, "--log-json", log] + extra, nproc=nproc)
    assert_same_losses(read_losses(log), reference_losses)


@pytest.mark.parametrize("precision,tolerance", [("--bf16", 3e-2), ("--fp16", 1e-2)])
def test_half_precision_tracks_fp32(precision, tolerance, reference_losses, tmp_path):
    """bf16 and fp16 (megatron's mixed-precision optimizer: fp32 main weights, fp16 with a dynamic loss
    scale) at TP2 follow the fp32 run within their rounding; fp16 prints its loss scale."""
    log = tmp_path / "log.jsonl"
    proc = run_pretrain(TINY_ARGS + ["--train-iters", ITERS, "--log-json", log, "--tensor-model-parallel-size", 2,
                                     precision], nproc=2)
    losses = read_losses(log)
    assert sorted(losses) == sorted(reference_losses)
    for it, ref in reference_losses.items():
        assert losses[it] == pytest.approx(ref, rel=tolerance), f"{precision} iteration {it}"
    assert losses != reference_losses
    assert (" loss scale: " in proc.stdout) == (precision == "--fp16")
    # It really ran in half precision: the same flags through the project's builders, one training step, on
    # every rank: the model's parameters and every layer's output activations are in the half type, and the
    # optimizer steps fp32 main copies of them.
    half = "torch.bfloat16" if precision == "--bf16" else "torch.float16"
    cmd = torchrun_cmd(2, str(REPO / "tests" / "training" / "precision_worker.py")) + [str(tmp_path / "dtypes")] + [
        str(a) for a in TINY_ARGS + ["--train-iters", 1, "--tensor-model-parallel-size", 2, precision]]
    worker = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-4000:]
    for rank in (0, 1):
        dtypes = json.loads((tmp_path / f"dtypes.{rank}.json").read_text())
        assert set(dtypes["params"]) == {half}, f"rank {rank} parameters: {dtypes['params']}"
        assert set(dtypes["activations"]) == {half} and sum(dtypes["activations"].values()) > 0, (
            f"rank {rank} layer outputs: {dtypes['activations']}")
        assert set(dtypes["main_params"]) == {"torch.float32"}, f"rank {rank} optimizer: {dtypes['main_params']}"


def test_simulated_two_node_job_matches_single_process(reference_losses, tmp_path):
    """Two torchrun agents (--nnodes 2, --node-rank 0/1) on 127.0.0.1, TP2 x PP2 across them."""
    log = tmp_path / "log.jsonl"
    args = [str(a) for a in TINY_ARGS + ["--train-iters", ITERS, "--log-json", log,
                                         "--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2]]
    port = free_port()
    agents = [subprocess.Popen(torchrun_cmd(2, str(REPO / "pretrain_llama.py"), nnodes=2, node_rank=rank,
                                            port=port) + args,
                               cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for rank in (0, 1)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    for agent, out in zip(agents, outputs):
        assert agent.returncode == 0, out[-4000:]
    assert_same_losses(read_losses(log), reference_losses)


def test_pipeline_run_evaluating_on_its_last_iteration_finishes(tmp_path):
    """Only the last pipeline stage holds losses; every stage must still agree on the final evaluation."""
    log = tmp_path / "log.jsonl"
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 2, "--eval-interval", 2, "--eval-iters", 1,
                                     "--pipeline-model-parallel-size", 2, "--log-json", log], nproc=2, timeout=300)
    assert "final validation loss at iteration 2" in proc.stdout
    assert sorted(read_log(log, "validation lm loss")) == [0, 2]


# μP with Crystal's architecture (LayerNorm + biases, tied embeddings, partial GPT-J RoPE, 1/d attention,
# embedding and logits multipliers): the multipliers must apply once on every layout, the logits one before
# the vocab-parallel cross entropy, and the tied embedding must stay tied across pipeline stages.
MUP_ARGS = TINY_ARGS + ["--model-preset", "tiny-crystal", "--train-iters", ITERS]
MUP_LAYOUTS = {
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", 2, "--sequence-parallel"]),
    "pp2-tied-embeddings": (2, ["--pipeline-model-parallel-size", 2]),
    "dp2-distributed-optimizer": (2, ["--use-distributed-optimizer"]),
}


@pytest.fixture(scope="module")
def mup_reference_losses(tmp_path_factory):
    log = tmp_path_factory.mktemp("mup_single") / "log.jsonl"
    run_pretrain(MUP_ARGS + ["--log-json", log])
    losses = read_losses(log)
    assert sorted(losses) == list(range(1, ITERS + 1))
    assert losses[ITERS] < losses[1]  # the μP model trains
    return losses


@pytest.mark.parametrize("layout", list(MUP_LAYOUTS))
def test_mup_crystal_layout_matches_single_process(layout, mup_reference_losses, tmp_path):
    nproc, extra = MUP_LAYOUTS[layout]
    log = tmp_path / "log.jsonl"
    run_pretrain(MUP_ARGS + ["--log-json", log] + extra, nproc=nproc)
    assert_same_losses(read_losses(log), mup_reference_losses)


# DCLM-1B's architecture (open_lm): gain-only LayerNorm, a query/key norm over the whole projection whose
# statistics are all-reduced across TP, open_lm's initialisation.
DCLM_ARGS = TINY_ARGS + ["--model-preset", "tiny-dclm", "--train-iters", ITERS]
DCLM_LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", 2]),
    "pp2": (2, ["--pipeline-model-parallel-size", 2]),
    "dp2": (2, []),
    "tp2xpp2": (4, ["--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2, "--sequence-parallel"]),
}


def test_dclm_layouts_match_single_process(tmp_path):
    """Started together (start-up, not compute, is what costs on CPU)."""
    logs = {name: tmp_path / f"{name}.jsonl" for name in ["single", *DCLM_LAYOUTS]}
    procs = {"single": start_pretrain(DCLM_ARGS + ["--log-json", logs["single"]])}
    procs.update({name: start_pretrain(DCLM_ARGS + ["--log-json", logs[name]] + extra, nproc=nproc)
                  for name, (nproc, extra) in DCLM_LAYOUTS.items()})
    wait_all(procs)
    reference = read_losses(logs["single"])
    assert sorted(reference) == list(range(1, ITERS + 1)) and reference[ITERS] < reference[1]
    for name in DCLM_LAYOUTS:
        assert_same_losses(read_losses(logs[name]), reference)
