import importlib

import pytest
import torch

from megatron_ext.kernels import apply_rotary

rotary_mod = importlib.import_module("megatron_ext.kernels.rotary")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _freqs(s, r, start=5, base=10000.0):
    # Angles for positions start .. start+s-1 (a position offset, e.g. a later chunk).
    pos = torch.arange(start, start + s, dtype=torch.float32)
    inv_freq = 1.0 / base ** (torch.arange(0, r, 2, dtype=torch.float32) / r)
    return torch.outer(pos, inv_freq)


def _run(q, k, freqs, interleaved, impl, dq_out, dk_out):
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    qo, ko = apply_rotary(q, k, freqs, interleaved=interleaved, impl=impl)
    torch.autograd.backward((qo, ko), (dq_out, dk_out))
    return qo, ko, q.grad, k.grad


def _compare(check, q, k, freqs, interleaved, dtype):
    dqo = torch.randn(q.shape, dtype=dtype)
    dko = torch.randn(k.shape, dtype=dtype)
    out = _run(q, k, freqs, interleaved, "triton", dqo, dko)
    ref = _run(q.double(), k.double(), freqs, interleaved, "torch", dqo.double(), dko.double())
    for name, a, e in zip(("q_out", "k_out", "dq", "dk"), out, ref):
        assert a.dtype == dtype
        check(a, e, dtype, name)
    # Pass-through channels must be copied exactly.
    r = 2 * freqs.shape[-1]
    assert torch.equal(out[0][..., r:], q[..., r:]) and torch.equal(out[1][..., r:], k[..., r:])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("d,r", [(32, 32), (34, 16)])  # full and partial rotary (odd pass-through)
def test_rotary_fwd_bwd(check, dtype, interleaved, d, r):
    s, b, hq, hk = 6, 2, 4, 2  # GQA
    q = torch.randn(s, b, hq, d, dtype=dtype)
    k = torch.randn(s, b, hk, d, dtype=dtype)
    _compare(check, q, k, _freqs(s, r), interleaved, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half-split", "interleaved"])
@pytest.mark.parametrize("r", [128, 32], ids=["full", "partial-25pct"])
def test_rotary_head_dim_128(check, dtype, interleaved, r):
    # The 7B head dim; 25% partial rotary (Crystal) rotates 32 channels and passes 96 through.
    s, b, hq, hk, d = 3, 2, 4, 2, 128
    q = torch.randn(s, b, hq, d, dtype=dtype)
    k = torch.randn(s, b, hk, d, dtype=dtype)
    _compare(check, q, k, _freqs(s, r, start=2000), interleaved, dtype)  # large angles, as late positions


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_fused_qkv_view(check, interleaved, dtype):
    # q/k/v as strided views of one fused QKV projection output (no copy made).
    s, b, hq, hk, d = 5, 2, 6, 2, 24
    qkv = torch.randn(s, b, (hq + 2 * hk) * d, dtype=dtype)
    q = qkv[..., : hq * d].view(s, b, hq, d)
    k = qkv[..., hq * d : (hq + hk) * d].view(s, b, hk, d)
    assert not q.is_contiguous() and not k.is_contiguous()
    _compare(check, q, k, _freqs(s, 16), interleaved, dtype)


def test_rotary_channel_strided_inputs(check):
    # Non-unit channel stride (head dim not innermost).
    s, b, h, d = 4, 2, 3, 20
    q = torch.randn(s, b, d, h).transpose(2, 3)
    k = torch.randn(s, b, d, 1).transpose(2, 3)
    _compare(check, q, k, _freqs(s, 12), False, torch.float32)
    _compare(check, q, k, _freqs(s, 12), True, torch.float32)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_multiple_head_groups(check, monkeypatch, interleaved):
    # Force 4 heads per program: q (7 heads) spans two groups, the last partly masked.
    monkeypatch.setattr(rotary_mod, "_heads_per_program", lambda h_max, block_half: 4)
    q = torch.randn(3, 2, 7, 16)
    k = torch.randn(3, 2, 5, 16)
    _compare(check, q, k, _freqs(3, 12), interleaved, torch.float32)


def test_rotary_position_offset_matches_shifted_sequence():
    # Rotating positions 5..9 equals the tail of rotating positions 0..9.
    q, k = torch.randn(10, 1, 2, 16), torch.randn(10, 1, 1, 16)
    full_q, full_k = apply_rotary(q, k, _freqs(10, 16, start=0), impl="triton")
    off_q, off_k = apply_rotary(q[5:], k[5:], _freqs(5, 16, start=5), impl="triton")
    torch.testing.assert_close(off_q, full_q[5:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(off_k, full_k[5:], rtol=1e-6, atol=1e-6)


def test_rotary_styles_pairing():
    # Pin the pairing convention of each style on a single pair.
    d, r = 8, 4
    ang = torch.tensor([[0.3, 0.7]])
    x = torch.randn(1, 1, 1, d)
    c, s_ = ang.cos()[0], ang.sin()[0]
    half, _ = apply_rotary(x, x, ang, interleaved=False, impl="triton")
    x1, x2 = x[0, 0, 0, :2], x[0, 0, 0, 2:4]
    torch.testing.assert_close(half[0, 0, 0, :4], torch.cat([x1 * c - x2 * s_, x2 * c + x1 * s_]))
    inter, _ = apply_rotary(x, x, ang, interleaved=True, impl="triton")
    x1, x2 = x[0, 0, 0, 0:4:2], x[0, 0, 0, 1:4:2]
    torch.testing.assert_close(inter[0, 0, 0, :4], torch.stack([x1 * c - x2 * s_, x2 * c + x1 * s_], -1).flatten())


def test_rotary_deterministic():
    q, k = torch.randn(4, 2, 4, 32), torch.randn(4, 2, 2, 32)
    f = _freqs(4, 32)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    a = _run(q, k, f, False, "triton", dq, dk)
    b = _run(q, k, f, False, "triton", dq, dk)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
