import pytest
import torch

from megatron_ext.kernels import swiglu


def _id(value):
    return str(value).replace("torch.", "")


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _run(x, impl, dy):
    x = x.detach().requires_grad_()
    y = swiglu(x, impl=impl)
    y.backward(dy)
    return y, x.grad


def _compare(check, x, dtype):
    f = x.shape[-1] // 2
    dy = torch.randn(*x.shape[:-1], f, dtype=dtype)
    y, dx = _run(x, "triton", dy)
    y_ref, dx_ref = _run(x.double(), "torch", dy.double())
    assert y.dtype == dtype and dx.dtype == dtype
    check(y, y_ref, dtype, "y")
    check(dx, dx_ref, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f", [100, 127, 1100])  # 1100: several column blocks, ragged tail
def test_swiglu_fwd_bwd(check, dtype, f):
    _compare(check, torch.randn(3, 4, 2 * f, dtype=dtype) * 3, dtype)


# FFN sizes of the 7B presets: 11008 (LLaMA / Amber) and 10922 (Crystal: a ragged last column block).
@pytest.mark.parametrize("dtype,f", [(torch.float32, 11008), (torch.float32, 10922), (torch.bfloat16, 11008)],
                         ids=_id)
def test_swiglu_model_size(check, dtype, f):
    _compare(check, torch.randn(2, 2 * f, dtype=dtype) * 3, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_non_contiguous(check, dtype):
    x = torch.randn(9, 2 * 127 + 10, dtype=dtype)[:, 4 : 4 + 2 * 127]
    assert not x.is_contiguous()
    _compare(check, x, dtype)
    _compare(check, torch.randn(5, 3, 2 * 100, dtype=dtype).transpose(0, 1), dtype)


def test_swiglu_halves_ordering():
    # gate first, then up.
    gate, up = torch.randn(4, 6), torch.randn(4, 6)
    y = swiglu(torch.cat([gate, up], -1), impl="triton")
    torch.testing.assert_close(y, torch.nn.functional.silu(gate) * up)


def test_swiglu_deterministic():
    x, dy = torch.randn(8, 254), torch.randn(8, 127)
    assert torch.equal(_run(x, "triton", dy)[1], _run(x, "triton", dy)[1])
