import pytest
import torch

from megatron_ext.kernels import rms_norm


def _id(value):
    return str(value).replace("torch.", "")


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _run(x, w, eps, impl, dy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = rms_norm(x, w, eps, impl=impl)
    y.backward(dy)
    return y, x.grad, w.grad


def _compare(check, x, w, dtype, eps=1e-5):
    dy = torch.randn(x.shape, dtype=dtype)
    y, dx, dw = _run(x, w, eps, "triton", dy)
    y_ref, dx_ref, dw_ref = _run(x.double(), w.double(), eps, "torch", dy.double())
    assert y.dtype == dtype and dx.dtype == x.dtype and dw.dtype == w.dtype
    check(y, y_ref, dtype, "y")
    check(dx, dx_ref, dtype, "dx")
    check(dw, dw_ref, dtype, "dw")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [100, 127, 320])
def test_rms_norm_fwd_bwd(check, dtype, n):
    x = torch.randn(3, 4, n, dtype=dtype) * 2 + 0.5
    w = torch.randn(n, dtype=dtype)
    _compare(check, x, w, dtype)


# Hidden sizes of the presets (3200 OpenLLaMA-3B, 4096 7B) and FFN-like widths (10922, 11008), which
# pad to a 4096 / 16384 block. 5 rows: the backward's 4 partial programs, one of them owning two rows.
@pytest.mark.parametrize("dtype,n", [(torch.float32, n) for n in (3200, 4096, 10922, 11008)]
                         + [(torch.bfloat16, 4096), (torch.bfloat16, 11008)], ids=_id)
def test_rms_norm_model_sizes(check, dtype, n):
    _compare(check, torch.randn(5, n, dtype=dtype) + 0.5, torch.randn(n, dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_non_contiguous(check, dtype):
    # Row-strided slice of a wider activation (used in place via the row stride).
    x = torch.randn(10, 2 * 96 + 5, dtype=dtype)[:, 3 : 3 + 127]
    assert not x.is_contiguous()
    _compare(check, x, torch.randn(127, dtype=dtype), dtype)
    # Transposed batch dims (not viewable as rows -> copied).
    x = torch.randn(4, 3, 127, dtype=dtype).transpose(0, 1)
    _compare(check, x, torch.randn(127, dtype=dtype), dtype)


def test_rms_norm_fp32_weight_bf16_input(check):
    x = torch.randn(12, 127, dtype=torch.bfloat16)
    _compare(check, x, torch.randn(127), torch.bfloat16)


def test_rms_norm_deterministic():
    x = torch.randn(15, 127)
    w = torch.randn(127)
    dy = torch.randn(15, 127)
    _, dx1, dw1 = _run(x, w, 1e-6, "triton", dy)
    _, dx2, dw2 = _run(x, w, 1e-6, "triton", dy)
    assert torch.equal(dw1, dw2) and torch.equal(dx1, dx2)


def _rms_norm_float64(x, w, eps):
    """Independent reference (not the project's torch path): the definition, in float64."""
    x, w = x.double(), w.double()
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + eps) * w


# Small activations: mean square 1e-6 to 1e-3 against eps 1e-5 (and 1e-6, LLaMA's), where eps is a large
# part of the denominator: a kernel that drops or misplaces eps is off by up to 10x here, and by 1% at 1e-3.
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("mean_square", [1e-6, 1e-4, 1e-3])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rms_norm_small_inputs_match_float64_definition(check, dtype, mean_square, eps):
    n = 320
    x = (torch.randn(6, n, dtype=torch.float64) * mean_square ** 0.5).to(dtype)
    assert 0.5 * mean_square < x.double().pow(2).mean().item() < 2 * mean_square
    w = (torch.rand(n, dtype=torch.float64) + 0.5).to(dtype)
    dy = torch.randn(6, n, dtype=dtype)
    y, dx, dw = _run(x, w, eps, "triton", dy)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y64 = _rms_norm_float64(x64, w64, eps)
    y64.backward(dy.double())
    check(y, y64, dtype, "y")
    check(dx, x64.grad, dtype, "dx")
    check(dw, w64.grad, dtype, "dw")
