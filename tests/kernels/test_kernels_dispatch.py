import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_ext.kernels import apply_rotary, layer_norm, rms_norm, swiglu

REPO_ROOT = Path(__file__).resolve().parents[2]


def _calls(impl):
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.ones(8, requires_grad=True)
    q = torch.randn(2, 1, 2, 8, requires_grad=True)
    f = torch.zeros(2, 4)
    return {
        "rms_norm": rms_norm(x, w, 1e-5, impl=impl),
        "layer_norm": layer_norm(x, w, None, 1e-5, impl=impl),
        "swiglu": swiglu(x, impl=impl),
        "apply_rotary": apply_rotary(q, q, f, impl=impl)[0],
    }


def test_impl_none_uses_torch_on_cpu():
    # Even with TRITON_INTERPRET=1 set (as here), None must not pick the interpreter.
    assert os.environ.get("TRITON_INTERPRET") == "1"
    for name, y in _calls(None).items():
        assert "Function" not in type(y.grad_fn).__name__, f"{name} used the Triton path"


def test_impl_triton_uses_kernels():
    for name, y in _calls("triton").items():
        assert "Function" in type(y.grad_fn).__name__, f"{name} did not use the Triton path"


def test_bad_impl_rejected():
    with pytest.raises(ValueError):
        rms_norm(torch.randn(2, 4), torch.ones(4), 1e-5, impl="cuda")


def test_triton_on_cpu_without_interpreter_errors():
    code = (
        "import torch\n"
        "from megatron_ext.kernels import rms_norm, layer_norm, swiglu, apply_rotary\n"
        "x, w = torch.randn(2, 8), torch.ones(8)\n"
        "q, f = torch.randn(2, 1, 1, 8), torch.zeros(2, 4)\n"
        "calls = [lambda: rms_norm(x, w, 1e-5, impl='triton'),\n"
        "         lambda: layer_norm(x, w, None, 1e-5, impl='triton'),\n"
        "         lambda: swiglu(x, impl='triton'),\n"
        "         lambda: apply_rotary(q, q, f, impl='triton')]\n"
        "for c in calls:\n"
        "    try:\n"
        "        c()\n"
        "    except RuntimeError as e:\n"
        "        assert 'TRITON_INTERPRET=1' in str(e) and \"impl='torch'\" in str(e), str(e)\n"
        "    else:\n"
        "        raise SystemExit('no error raised')\n"
        "assert rms_norm(x, w, 1e-5).shape == x.shape  # impl=None still works\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_expanded_upstream_grads_match_reference():
    # loss.sum() hands the backward a stride-0 (expanded) gradient.
    x = torch.randn(6, 20)
    w = torch.randn(20)
    q = torch.randn(3, 2, 4, 8)
    f = torch.randn(3, 2)
    ops = [
        lambda i, x, w, q: rms_norm(x, w, 1e-5, impl=i),
        lambda i, x, w, q: layer_norm(x, w, w, 1e-5, impl=i),
        lambda i, x, w, q: swiglu(x, impl=i),
        lambda i, x, w, q: torch.cat([t.flatten() for t in apply_rotary(q, q[:, :, :2], f, impl=i)]),
    ]
    for op in ops:
        grads = []
        for impl in ("triton", "torch"):
            leaves = [t.detach().clone().requires_grad_() for t in (x, w, q)]
            op(impl, *leaves).sum().backward()
            grads.append([t.grad for t in leaves])
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
