"""megatron_ext/layers/norms.py with --norm-impl apex, against a stand-in for apex (not installed here).

The stand-in keeps apex's contract (apex/normalization/fused_layer_norm.py): fused_layer_norm_affine(
input, weight, bias, normalized_shape, eps) needs a bias tensor (it calls bias.contiguous(), and its
torch custom op declares `Tensor bias`); fused_rms_norm_affine(input, weight, normalized_shape, eps).
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from megatron_ext.kernels import layer_norm_ref, rms_norm_ref
from megatron_ext.layers import norms

H = 48


def config(normalization="LayerNorm", bias=False, norm_impl="apex"):
    return types.SimpleNamespace(normalization=normalization, layernorm_bias=bias, params_dtype=torch.float32,
                                 sequence_parallel=False, norm_impl=norm_impl, kernel_impl="torch")


@pytest.fixture
def fake_apex(monkeypatch):
    calls = []

    def fused_layer_norm_affine(input, weight, bias, normalized_shape, eps, memory_efficient=False):
        bias_ = bias.contiguous()  # what apex does first: None has no .contiguous()
        assert isinstance(bias_, torch.Tensor) and bias_.shape == weight.shape and bias_.dtype == weight.dtype
        calls.append(("layer_norm", bias))
        return F.layer_norm(input, tuple(normalized_shape), weight, bias_, eps)

    def fused_rms_norm_affine(input, weight, normalized_shape, eps, memory_efficient=False):
        calls.append(("rms_norm", None))
        return F.rms_norm(input, tuple(normalized_shape), weight, eps)

    package = types.ModuleType("apex")
    package.normalization = types.ModuleType("apex.normalization")
    package.normalization.fused_layer_norm = types.ModuleType("apex.normalization.fused_layer_norm")
    package.normalization.fused_layer_norm.fused_layer_norm_affine = fused_layer_norm_affine
    package.normalization.fused_layer_norm.fused_rms_norm_affine = fused_rms_norm_affine
    monkeypatch.setitem(sys.modules, "apex", package)
    monkeypatch.setitem(sys.modules, "apex.normalization", package.normalization)
    monkeypatch.setitem(sys.modules, "apex.normalization.fused_layer_norm", package.normalization.fused_layer_norm)
    return calls


def run(norm, x):
    with torch.no_grad():
        norm.weight.copy_(torch.randn(H))
        if norm.bias is not None:
            norm.bias.copy_(torch.randn(H))
    x = x.detach().requires_grad_()
    y = norm(x)
    y.backward(torch.ones_like(y) + torch.arange(H) / H)
    return y, x.grad


def reference(norm, x, rms):
    w = norm.weight.detach().requires_grad_()
    b = norm.bias.detach().requires_grad_() if norm.bias is not None else None
    x = x.detach().requires_grad_()
    y = rms_norm_ref(x, w, 1e-5) if rms else layer_norm_ref(x, w, b, 1e-5)
    y.backward(torch.ones_like(y) + torch.arange(H) / H)
    return y, x.grad, w.grad, (b.grad if b is not None else None)


def test_apex_layer_norm_without_bias(fake_apex):
    norm = norms.Norm(config(bias=False), H)
    x = torch.randn(3, 2, H) * 2 + 1
    y, dx = run(norm, x)
    y_ref, dx_ref, dw_ref, _ = reference(norm, x, rms=False)
    assert [kind for kind, _ in fake_apex] == ["layer_norm"]
    assert not fake_apex[0][1].requires_grad and torch.count_nonzero(fake_apex[0][1]) == 0
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)
    torch.testing.assert_close(norm.weight.grad, dw_ref)
    # The stand-in zero bias is neither a parameter nor saved.
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    assert list(norm.state_dict()) == ["weight"]


def test_apex_layer_norm_with_bias(fake_apex):
    norm = norms.Norm(config(bias=True), H)
    x = torch.randn(3, 2, H) * 2 + 1
    y, dx = run(norm, x)
    y_ref, dx_ref, dw_ref, db_ref = reference(norm, x, rms=False)
    assert fake_apex[0][1] is norm.bias
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(norm.bias.grad, db_ref)
    torch.testing.assert_close(norm.weight.grad, dw_ref)


def test_apex_rms_norm(fake_apex):
    norm = norms.Norm(config(normalization="RMSNorm"), H)
    x = torch.randn(3, 2, H) + 0.5
    y, dx = run(norm, x)
    y_ref, dx_ref, dw_ref, _ = reference(norm, x, rms=True)
    assert [kind for kind, _ in fake_apex] == ["rms_norm"]
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)
    torch.testing.assert_close(norm.weight.grad, dw_ref)


def test_apex_missing_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)  # import apex... raises ImportError
    with pytest.raises(RuntimeError, match="--norm-impl apex needs NVIDIA apex"):
        norms.Norm(config(bias=False), H)
