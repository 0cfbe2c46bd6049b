import pytest
import torch

from megatron_ext.kernels import layer_norm


def _id(value):
    return str(value).replace("torch.", "")


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _run(x, w, b, eps, impl, dy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = layer_norm(x, w, b, eps, impl=impl)
    y.backward(dy)
    return y, x.grad, w.grad, (b.grad if b is not None else None)


def _compare(check, x, w, b, dtype, eps=1e-5):
    dy = torch.randn(x.shape, dtype=dtype)
    y, dx, dw, db = _run(x, w, b, eps, "triton", dy)
    ref = _run(x.double(), w.double(), b.double() if b is not None else None, eps, "torch", dy.double())
    assert y.dtype == dtype and dx.dtype == x.dtype and dw.dtype == w.dtype
    check(y, ref[0], dtype, "y")
    check(dx, ref[1], dtype, "dx")
    check(dw, ref[2], dtype, "dw")
    if b is not None:
        assert db.dtype == b.dtype
        check(db, ref[3], dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [100, 127, 320])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_fwd_bwd(check, dtype, n, bias):
    x = torch.randn(3, 4, n, dtype=dtype) * 2 + 1.0  # nonzero mean exercises centring
    w = torch.randn(n, dtype=dtype)
    b = torch.randn(n, dtype=dtype) if bias else None
    _compare(check, x, w, b, dtype)


# Hidden sizes of the presets (3200 OpenLLaMA-3B, 4096 7B) and FFN-like widths (10922, 11008), which
# pad to a 4096 / 16384 block. 5 rows: the backward's 4 partial programs, one of them owning two rows.
@pytest.mark.parametrize("dtype,n", [(torch.float32, n) for n in (3200, 4096, 10922, 11008)]
                         + [(torch.bfloat16, 4096), (torch.bfloat16, 10922)], ids=_id)
def test_layer_norm_model_sizes(check, dtype, n):
    x = torch.randn(5, n, dtype=dtype) * 2 + 1.0
    _compare(check, x, torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype), dtype)


def test_layer_norm_model_size_without_bias(check):
    _compare(check, torch.randn(5, 4096) * 2 + 1.0, torch.randn(4096), None, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_non_contiguous(check, dtype):
    x = torch.randn(10, 300, dtype=dtype)[:, 7 : 7 + 127]
    assert not x.is_contiguous()
    _compare(check, x, torch.randn(127, dtype=dtype), torch.randn(127, dtype=dtype), dtype)
    x = torch.randn(4, 3, 100, dtype=dtype).transpose(0, 1)
    _compare(check, x, torch.randn(100, dtype=dtype), None, dtype)


def test_layer_norm_deterministic():
    x = torch.randn(15, 127)
    w, b = torch.randn(127), torch.randn(127)
    dy = torch.randn(15, 127)
    r1 = _run(x, w, b, 1e-5, "triton", dy)
    r2 = _run(x, w, b, 1e-5, "triton", dy)
    for a, c in zip(r1[1:], r2[1:]):
        assert torch.equal(a, c)


def _layer_norm_float64(x, w, b, eps):
    """Independent reference (not the project's torch path): the definition, in float64."""
    x, w = x.double(), w.double()
    centred = x - x.sum(-1, keepdim=True) / x.shape[-1]
    y = centred / torch.sqrt((centred * centred).sum(-1, keepdim=True) / x.shape[-1] + eps) * w
    return y + b.double() if b is not None else y


# Small activations: variance 1e-6 to 1e-3 against eps 1e-5, where eps is a large part of the denominator.
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("variance", [1e-6, 1e-4, 1e-3])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_small_inputs_match_float64_definition(check, dtype, variance, bias):
    n, eps = 320, 1e-5
    x = ((torch.randn(6, n, dtype=torch.float64) + 0.5) * variance ** 0.5).to(dtype)
    assert 0.5 * variance < x.double().var(-1).mean().item() < 2 * variance
    w = (torch.rand(n, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(n, dtype=dtype) if bias else None
    dy = torch.randn(6, n, dtype=dtype)
    y, dx, dw, db = _run(x, w, b, eps, "triton", dy)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = b.double().requires_grad_() if bias else None
    _layer_norm_float64(x64, w64, b64, eps).backward(dy.double())
    check(y, _layer_norm_float64(x, w, b, eps), dtype, "y")
    check(dx, x64.grad, dtype, "dx")
    check(dw, w64.grad, dtype, "dw")
    if bias:
        check(db, b64.grad, dtype, "db")
