"""Kernel outputs and gradients are bit-identical run to run, whatever order the programs run in.

On a GPU the programs of a launch run concurrently, in no fixed order; a kernel that accumulates across
programs with atomics (or otherwise depends on which program finishes first) gives different bits from run
to run. Triton's CPU interpreter runs the programs one after another, always in the same order, so running
twice there proves nothing by itself. These tests run each kernel's forward and backward several times, each
time with the interpreter's programs executed in a different random order (a permutation of the program ids,
patched into the interpreter), and compare the bits. A self-check shows the permutation does expose an
order-dependent kernel (fp32 atomic adds). The source check for `atomic_` stays as a cheap extra.
"""

import importlib
import inspect
import re

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from megatron_ext.kernels import apply_rotary, layer_norm, rms_norm, swiglu

# The modules (the package's names rms_norm etc. are the functions).
KERNEL_MODULES = [importlib.import_module(f"megatron_ext.kernels.{name}")
                  for name in ("rms_norm", "layer_norm", "rotary", "swiglu")]

ORDERS = 6  # program orders tried per kernel (the first is the interpreter's own)


@pytest.fixture
def program_order(monkeypatch):
    """program_order(seed): later launches run their programs in a random order drawn from seed
    (None: the interpreter's sequential order). The interpreter still runs every program id once."""
    builder = interpreter.InterpreterBuilder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    state = {"rng": None, "perm": None}

    def patched_dim(self, nx, ny, nz):
        set_dim(self, nx, ny, nz)
        rng = state["rng"]
        state["perm"] = None if rng is None else rng.permutation(nx * ny * nz)

    def patched_idx(self, x, y, z):
        perm = state["perm"]
        if perm is not None:
            nx, ny, nz = self.grid_dim
            x, y, z = np.unravel_index(perm[np.ravel_multi_index((x, y, z), (nx, ny, nz))], (nx, ny, nz))
        set_idx(self, int(x), int(y), int(z))

    monkeypatch.setattr(builder, "set_grid_dim", patched_dim)
    monkeypatch.setattr(builder, "set_grid_idx", patched_idx)

    def choose(seed):
        state["rng"] = None if seed is None else np.random.default_rng(seed)

    yield choose


def _run_orders(program_order, fn) -> list:
    results = []
    for order in range(ORDERS):
        program_order(None if order == 0 else order)
        results.append([t.detach().clone() for t in fn()])
    return results


def _assert_bit_identical(results, what):
    first = results[0]
    for order, other in enumerate(results[1:], start=1):
        for i, (a, b) in enumerate(zip(first, other)):
            assert a.dtype == b.dtype and torch.equal(a, b), (
                f"{what}: output {i} differs between program order 0 and {order} "
                f"(max diff {(a.double() - b.double()).abs().max().item():.3g})")


@triton.jit
def _atomic_sum_kernel(X, OUT, N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, N)
    tl.atomic_add(OUT + cols, tl.load(X + pid * N + cols))


def test_program_order_patch_exposes_an_atomic_accumulation(program_order):
    """The harness can see what it is for: summing rows with fp32 atomics gives other bits in another order."""
    x = torch.randn(64, 32) * torch.logspace(-4, 4, 64)[:, None]

    def atomic_sum():
        out = torch.zeros(32)
        _atomic_sum_kernel[(64,)](x, out, N=32)
        return [out]

    results = _run_orders(program_order, atomic_sum)
    assert all(torch.allclose(r[0], x.sum(0), rtol=1e-4, atol=1e-3) for r in results)  # every program ran once
    assert any(not torch.equal(results[0][0], r[0]) for r in results[1:]), "program order not permuted"


def _grads(fn, *inputs, dy):
    inputs = [t.detach().requires_grad_() for t in inputs]
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, dy)
    return list(outputs) + [t.grad for t in inputs]


# 37 rows: the weight-gradient reduction's 4 partial programs own 9 or 10 rows each.
ROWS, N = 37, 127


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_rms_norm_bits_do_not_depend_on_program_order(program_order, dtype):
    x, w = torch.randn(ROWS, N, dtype=dtype), torch.randn(N, dtype=dtype)
    dy = (torch.randn(ROWS, N, dtype=dtype),)
    results = _run_orders(program_order, lambda: _grads(lambda a, b: rms_norm(a, b, 1e-5, impl="triton"),
                                                        x, w, dy=dy))
    _assert_bit_identical(results, "rms_norm (y, dx, dw)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_layer_norm_bits_do_not_depend_on_program_order(program_order, dtype):
    x, w, b = torch.randn(ROWS, N, dtype=dtype) + 1, torch.randn(N, dtype=dtype), torch.randn(N, dtype=dtype)
    dy = (torch.randn(ROWS, N, dtype=dtype),)
    results = _run_orders(program_order, lambda: _grads(lambda a, c, d: layer_norm(a, c, d, 1e-5, impl="triton"),
                                                        x, w, b, dy=dy))
    _assert_bit_identical(results, "layer_norm (y, dx, dw, db)")


def test_swiglu_bits_do_not_depend_on_program_order(program_order):
    x = torch.randn(ROWS, 2 * 1100) * 3  # several column blocks
    dy = (torch.randn(ROWS, 1100),)
    results = _run_orders(program_order, lambda: _grads(lambda a: swiglu(a, impl="triton"), x, dy=dy))
    _assert_bit_identical(results, "swiglu (y, dx)")


@pytest.mark.parametrize("interleaved", [False, True], ids=["half-split", "interleaved"])
def test_rotary_bits_do_not_depend_on_program_order(program_order, interleaved):
    s, r = 9, 16
    q, k = torch.randn(s, 2, 4, 32), torch.randn(s, 2, 2, 32)
    pos = torch.arange(s, dtype=torch.float32)
    freqs = torch.outer(pos, 1.0 / 10000.0 ** (torch.arange(0, r, 2, dtype=torch.float32) / r))
    dy = (torch.randn_like(q), torch.randn_like(k))
    results = _run_orders(program_order, lambda: _grads(
        lambda a, b: apply_rotary(a, b, freqs, interleaved=interleaved, impl="triton"), q, k, dy=dy))
    _assert_bit_identical(results, "apply_rotary (q, k, dq, dk)")


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.split(".")[-1])
def test_kernels_use_no_atomics(module):
    """Extra, cheap: no atomics in the kernel sources (the run-in-any-order tests above are the check)."""
    source = inspect.getsource(module)
    assert not re.search(r"\batomic_\w+", source), f"{module.__name__} accumulates with atomics"
