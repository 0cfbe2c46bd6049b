"""A tiny model built with --kernels triton (interpreted on CPU) trains like the torch-reference model.

One torchrun launch (tests/kernels/kernels_worker.py) builds, per case, the torch-reference model and
Triton-kernel models side by side through the project's builders and trains each with `train_step`:
  * every parameter's gradient of the first step (per rank, keyed by global name and TP rank) must
    match the reference's to a relative norm error of 1e-5 (fp32), as must the loss and grad norm of
    every step;
  * the Triton variants include full (uniform, 1 layer) and selective activation recomputation and the
    distributed optimizer (DP2); the recorded kernel calls prove the Triton path ran and that the
    recomputation really re-ran the kernels;
  * bf16 (--bf16, the GPU configuration): the Triton model against the torch model, both in bf16, at
    bf16's precision (the two round at different points: the kernels keep fp32 inside a fused op), with
    the parameters' dtype checked and the bf16 reference shown to differ from the fp32 one.
"""

import json
import subprocess

import pytest
import torch
from launch import REPO, TINY_ARGS, torchrun_cmd
from launch import subprocess_env as launch_env

ITERS = 2
NPROC = 2
# Relative tolerances per precision: gradient (norm of the difference / norm), loss, grad norm. bf16's
# were measured at 1.5e-2, 1.3e-4 and 7e-3 (llama-gqa-tp2, 2026-12): bf16 keeps 8 significant bits, so
# each op's output differs by up to 2^-9 wherever the two models round differently.
TOLERANCE = {"fp32": (1e-5, 1e-5, 1e-4), "bf16": (5e-2, 2e-3, 3e-2)}
BF16 = ["--bf16"]
# Small enough for the Triton interpreter: 2 layers, 16 tokens, 2 micro-batches per step.
SMALL = ["--num-layers", 2, "--seq-length", 16, "--global-batch-size", 2, "--train-iters", ITERS]
FULL = ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", 1]
SELECTIVE = ["--recompute-granularity", "selective"]
TRITON = ["--kernels", "triton"]

CASES = {
    # RMSNorm, half-split RoPE, GQA.
    "llama-gqa-tp2": (["--model-preset", "tiny-gqa", "--tensor-model-parallel-size", 2],
                      {"triton": TRITON, "triton-full-recompute": TRITON + FULL,
                       "triton-selective-recompute": TRITON + SELECTIVE, "triton-bf16": TRITON + BF16}),
    # LayerNorm + biases, 25% interleaved (GPT-J) RoPE, tied embeddings, μP.
    "crystal-tp2-sequence-parallel": (["--model-preset", "tiny-crystal", "--tensor-model-parallel-size", 2,
                                       "--sequence-parallel"],
                                      {"triton": TRITON, "triton-full-recompute": TRITON + FULL,
                                       "triton-selective-recompute": TRITON + SELECTIVE}),
    "crystal-dp2-distributed-optimizer": (["--model-preset", "tiny-crystal", "--use-distributed-optimizer"],
                                          {"triton": TRITON}),
}
# Variants compared with a reference other than the fp32 torch model: variant -> (reference, its flags).
REFERENCES = {"triton-bf16": ("torch-bf16", ["--kernels", "torch"] + BF16)}


def reference_of(variant: str) -> str:
    return REFERENCES[variant][0] if variant in REFERENCES else "torch"


def precision_of(variant: str) -> str:
    return "bf16" if variant.endswith("bf16") else "fp32"


# Ops each preset's layers call (RMSNorm models never call layer_norm and vice versa).
OPS = {"llama-gqa-tp2": ("rms_norm", "swiglu", "apply_rotary"),
       "crystal-tp2-sequence-parallel": ("layer_norm", "swiglu", "apply_rotary"),
       "crystal-dp2-distributed-optimizer": ("layer_norm", "swiglu", "apply_rotary")}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """rank -> case -> variant -> {"losses", "grad_norms", "grads", "calls"}; "torch" is the reference."""
    tmp = tmp_path_factory.mktemp("kernels_in_model")
    spec = [{"name": name, "argv": [str(a) for a in TINY_ARGS + layout + SMALL],
             "variants": {"torch": ["--kernels", "torch"],
                          **{REFERENCES[v][0]: [str(a) for a in REFERENCES[v][1]] for v in variants if v in REFERENCES},
                          **{v: [str(a) for a in f] for v, f in variants.items()}}}
            for name, (layout, variants) in CASES.items()]
    cmd = torchrun_cmd(NPROC, str(REPO / "tests/kernels/kernels_worker.py")) + [str(tmp / "out"), json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, env={**launch_env(), "TRITON_INTERPRET": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [torch.load(tmp / f"out.{rank}.pt", weights_only=True) for rank in range(NPROC)]


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


PAIRS = [(case, variant) for case, (_, variants) in CASES.items() for variant in variants]


@pytest.mark.parametrize("case,variant", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def test_triton_model_matches_torch_model(results, case, variant):
    precision = precision_of(variant)
    grad_tol, loss_tol, grad_norm_tol = TOLERANCE[precision]
    for rank, per_rank in enumerate(results):
        ref, got = per_rank[case][reference_of(variant)], per_rank[case][variant]
        dtype = {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[precision]
        assert got["param_dtypes"] == ref["param_dtypes"] == [dtype], (got["param_dtypes"], ref["param_dtypes"])
        if precision == "bf16":  # the bf16 reference really rounds: it is not the fp32 run
            fp32 = per_rank[case]["torch"]
            assert ref["losses"] != fp32["losses"] and max(
                rel_error(ref["grads"][k], g) for k, g in fp32["grads"].items()) > 1e-4
        # Per-parameter gradients of the first step, every tensor on every rank.
        assert ref["grads"] and sorted(got["grads"]) == sorted(ref["grads"])
        for key, expected in ref["grads"].items():
            assert expected.norm() > 0, f"rank {rank} {key}: zero reference gradient"
            assert got["grads"][key].shape == expected.shape, key
            err = rel_error(got["grads"][key], expected)
            assert err <= grad_tol, f"rank {rank} {key}: gradient relative error {err:.2e}"
        # Loss and grad norm of every step (the loss lives on every rank: no pipeline stages here).
        assert len(got["losses"]) == len(ref["losses"]) == ITERS
        for it in range(ITERS):
            assert got["losses"][it] == pytest.approx(ref["losses"][it], rel=loss_tol), f"loss at step {it + 1}"
            assert got["grad_norms"][it] == pytest.approx(ref["grad_norms"][it], rel=grad_norm_tol), \
                f"grad norm at step {it + 1}"


@pytest.mark.parametrize("case", list(CASES))
def test_each_variant_ran_the_kernels_it_claims(results, case):
    for per_rank in results:
        calls = {variant: r["calls"] for variant, r in per_rank[case].items()}
        for op in OPS[case]:
            for reference in {"torch"} | {reference_of(v) for v in CASES[case][1]}:
                assert calls[reference].get(f"{op}:torch", 0) > 0 and f"{op}:triton" not in calls[reference], \
                    f"{reference} {op}: {calls[reference]}"
            for variant in CASES[case][1]:
                assert calls[variant].get(f"{op}:triton", 0) > 0 and f"{op}:torch" not in calls[variant], \
                    f"{variant} {op}: {calls[variant]}"
        if "triton-full-recompute" in calls:  # every layer is recomputed: all ops run again
            for op in OPS[case]:
                assert calls["triton-full-recompute"][f"{op}:triton"] > calls["triton"][f"{op}:triton"], op
        if "triton-selective-recompute" in calls:  # only core attention (with its RoPE) is recomputed
            sel, plain = calls["triton-selective-recompute"], calls["triton"]
            assert sel["apply_rotary:triton"] > plain["apply_rotary:triton"]
            assert sel["swiglu:triton"] == plain["swiglu:triton"]
