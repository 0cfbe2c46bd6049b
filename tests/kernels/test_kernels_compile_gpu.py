"""Every Triton kernel of megatron_ext.kernels compiles for sm_80 (A100) and sm_90 (H100/H200),
without a GPU, at the launch configurations its launcher picks for every preset's shapes.

The other kernel tests run the kernels in Triton's CPU interpreter, which accepts code the GPU
compiler rejects (a non-power-of-2 tl.arange, indexing a tensor with [], ...), so a kernel could pass
CI and fail on the first GPU.  Here tests/kernels/compile_gpu_worker.py (a fresh process: this
folder's conftest turns the interpreter on) records each launcher's kernel launches on `meta`
tensors of the presets' shapes (every preset, tensor parallel 1/2/4/8 where the shapes divide, fp32
and bf16: block sizes, warp counts and argument types as the launchers choose them) and runs
triton.compile(ASTSource(...), target=GPUTarget("cuda", 80|90, 32)) on each distinct configuration.
No stage is skipped: Triton's full pipeline runs, ttir -> ttgir -> llir -> ptx -> cubin, the last
with the ptxas bundled in the triton wheel (no CUDA driver or GPU needed).  Only launching is left
to a GPU machine.

About 270 compilations, ~40 s of CPU on 2 processes on a cold Triton cache (~/.triton/cache, keyed
by kernel source, options, target and Triton version); seconds when nothing changed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from launch import REPO, subprocess_env

WORKER = Path(__file__).with_name("compile_gpu_worker.py")
TARGETS = {"sm_80", "sm_90"}
STAGES = {"ttir", "ttgir", "llir", "ptx", "cubin"}
PROBE = "_utils._probe_kernel"  # a capability probe with no arguments, never launched


@pytest.fixture(scope="module")
def report():
    proc = subprocess.run([sys.executable, str(WORKER)], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _failures(report) -> list[str]:
    """One paragraph per kernel and error: the error's last lines (where Triton names the construct
    and the source line), how many configurations hit it, and one of them in full."""
    groups = {}
    for entry in report["compiled"]:
        if entry["error"]:
            tail = "\n    ".join(entry["error"].splitlines()[-4:])
            groups.setdefault((entry["kernel"], tail), []).append(entry)
    paragraphs = []
    for (kernel, tail), entries in groups.items():
        config = dict(entries[0]["config"])
        used_by = config.pop("used_by", [])
        shown = ", ".join(used_by[:3]) + (", ..." if len(used_by) > 3 else "")
        paragraphs.append(f"{kernel}: {len(entries)} configuration(s) fail, e.g. for {entries[0]['target']} "
                          f"{config} (launched for {shown}):\n    {tail}")
    return paragraphs


def test_every_configuration_compiles_to_cubin(report):
    failures = _failures(report)
    assert not failures, "kernels the GPU compiler rejects:\n" + "\n".join(failures)
    for entry in report["compiled"]:
        assert STAGES <= set(entry["stages"]), entry


def test_every_kernel_is_compiled_for_both_targets(report):
    assert len(report["kernels"]) >= 7  # RMSNorm, LayerNorm (fwd, bwd), SwiGLU (fwd, bwd), RoPE, probe
    for kernel in report["kernels"]:
        targets = {e["target"] for e in report["compiled"] if e["kernel"] == kernel}
        assert targets == TARGETS, f"{kernel}: compiled for {sorted(targets)}; is it launched by a launcher?"


@pytest.mark.parametrize("shape", ["amber-7b TP1 bf16", "amber-7b TP8 fp32", "openllama-3b TP2 bf16",
                                   "llama2-7b-gqa TP8 bf16", "crystal-7b TP2 bf16", "llama-1b TP4 fp32"])
def test_presets_shapes_are_among_the_compiled_launches(report, shape):
    kernels = {e["kernel"] for e in report["compiled"] if shape in e["config"].get("used_by", [])}
    assert kernels == set(report["kernels"]) - {PROBE}, shape


def test_block_sizes_are_the_launchers_choices(report):
    """A few launches worked out by hand from the launchers' rules, as a check on the recording."""
    def configs(kernel, shape):
        return [e["config"] for e in report["compiled"]
                if e["kernel"] == kernel and e["target"] == "sm_90" and shape in e["config"]["used_by"]]

    # Hidden 3200 -> one 4096-wide row block; the backward doubles the warps from 4096 columns.
    (fwd,) = configs("rms_norm._rms_norm_fwd_kernel", "openllama-3b TP1 bf16")
    (bwd,) = configs("rms_norm._rms_norm_bwd_kernel", "openllama-3b TP1 bf16")
    assert (fwd["constexprs"], fwd["options"]) == ({"BLOCK": 4096}, {"num_warps": 8})
    assert (bwd["constexprs"], bwd["options"]) == ({"BLOCK": 4096}, {"num_warps": 16})
    assert fwd["pointers"] == {"X": "*bf16", "W": "*bf16", "Y": "*bf16", "RSTD": "*fp32"}
    # Crystal: partial interleaved rotary (32 of 128 channels rotate), 16 heads per rank at TP2.
    rotary = configs("rotary._rotary_kernel", "crystal-7b TP2 bf16")
    assert sorted(c["constexprs"]["BACKWARD"] for c in rotary) == [False, True]
    assert {json.dumps({k: v for k, v in c["constexprs"].items() if k != "BACKWARD"}, sort_keys=True)
            for c in rotary} == {json.dumps({"BLOCK_H": 16, "BLOCK_HALF": 16, "BLOCK_PASS": 128, "HAS_PASS": True,
                                             "INTERLEAVED": True}, sort_keys=True)}
    # SwiGLU: 11008 / TP8 = 1376 columns in 1024-column blocks.
    (swiglu,) = configs("swiglu._swiglu_fwd_kernel", "amber-7b TP8 fp32")
    assert (swiglu["constexprs"], swiglu["options"]) == ({"BLOCK": 1024}, {"num_warps": 4})
