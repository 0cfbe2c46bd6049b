"""Pinned requirements install on CPU-only and CUDA hosts alike.

A CUDA build of torch pins its own triton (torch 2.13.0: triton==3.7.1), which the CPU stack's
triton==3.9.0 (what CI's Triton interpreter runs) contradicts, so the two stacks are separate files:
requirements/ci.txt for CPU-only hosts, requirements/gpu.txt for CUDA hosts, and setup.py accepts both.
"""

import ast

from launch import REPO
from packaging.requirements import Requirement
from packaging.version import Version

TORCH_CUDA_TRITON = Version("3.7.1")  # Requires-Dist of torch 2.13.0's CUDA wheel


def _pins(name: str) -> dict[str, str]:
    """{package: exact version} of a requirements file (comments and blank lines skipped)."""
    pins = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier  # every line is one exact pin
            assert spec.operator == "==", line
            pins[req.name] = spec.version
    return pins


def _install_requires() -> dict[str, Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    (requires,) = [kw.value for kw in call.keywords if kw.arg == "install_requires"]
    return {Requirement(r).name: Requirement(r) for r in ast.literal_eval(requires)}


def test_gpu_requirements_leave_triton_to_torch():
    gpu = _pins("gpu.txt")
    assert "triton" not in gpu
    assert gpu["torch"] == "2.13.0"


def test_gpu_and_cpu_stacks_differ_only_in_triton():
    ci, gpu = _pins("ci.txt"), _pins("gpu.txt")
    assert ci["triton"] == "3.9.0"  # the interpreter's, for CPU-only hosts
    assert {k: v for k, v in ci.items() if k != "triton"} == gpu


def test_setup_accepts_both_tritons():
    triton = _install_requires()["triton"]
    assert triton.specifier.contains(TORCH_CUDA_TRITON) and triton.specifier.contains(_pins("ci.txt")["triton"])
