"""Shared setup for the Triton kernel tests.

Triton decides at @triton.jit decoration time whether a function is compiled or
interpreted, so TRITON_INTERPRET must be set before triton and
megatron_ext.kernels are imported. If another test directory already imported
them in this pytest process, drop those modules so the tests below re-import
interpreted kernels.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"


def _purge(prefix, keep=()):
    for name in list(sys.modules):
        if (name == prefix or name.startswith(prefix + ".")) and not name.startswith(keep):
            del sys.modules[name]


if "triton" in sys.modules:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(getattr(sys.modules["triton"].language.standard, "sum", None), InterpretedFunction):
        # triton was imported before this file set TRITON_INTERPRET, so its own
        # @jit library functions (tl.sum, tl.sigmoid, ...) are compiled-mode
        # objects the interpreter cannot call: re-import triton's Python modules
        # (keeping the native extension loaded).
        _purge("triton", keep=("triton._C",))
_purge("megatron_ext.kernels")

import pytest  # noqa: E402
import torch  # noqa: E402

from megatron_ext.kernels import _utils  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def _poison_and_seed(monkeypatch):
    # NaN-fill every kernel-written buffer so an unwritten element fails the check.
    monkeypatch.setattr(_utils, "POISON_BUFFERS", True)
    torch.manual_seed(0)


def _check(actual, expected, dtype, name=""):
    """||actual - expected|| / ||expected|| within the dtype's tolerance; NaN always fails."""
    assert actual is not None, f"{name}: missing"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN (unwritten or invalid element)"
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    rel = ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
    assert rel <= TOLERANCE[dtype], f"{name}: relative error {rel:.3e} > {TOLERANCE[dtype]:.0e} ({dtype})"


@pytest.fixture
def check():
    return _check
