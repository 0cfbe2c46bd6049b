"""Rotary position embedding for q [s, b, hq, d] and k [s, b, hk, d] (GQA: hq != hk).

freqs: float32 [s, r/2] rotation angles; r = 2 * freqs.shape[-1] <= d channels of
each head rotate, the rest pass through (partial rotary). Pair (x1, x2) at
angle a -> (x1 cos a - x2 sin a, x2 cos a + x1 sin a), where pairs are
    half-split  (interleaved=False, LLaMA rotate_half): (i, i + r/2)
    interleaved (interleaved=True,  GPT-J):              (2i, 2i + 1)
The backward of a rotation is the rotation by -a, so one kernel serves both
directions (BACKWARD flips the sign of sin).

One launch handles q and k: program (token, head group) with groups
[0, n_q_groups) on q and the rest on k. Inputs are addressed through all four
strides, so q/k can be views into a fused QKV activation without a copy;
cos/sin are computed in-kernel from the angles (reading fp32 angles once per
program is cheaper than materialising cos/sin tables).
"""
import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import next_power_of_2, use_triton


@triton.jit
def _rotary_kernel(
    Q, K, QO, KO, FREQS,
    sq_s, sq_b, sq_h, sq_d,
    sk_s, sk_b, sk_h, sk_d,
    sqo_s, sqo_b, sqo_h,
    sko_s, sko_b, sko_h,
    stride_f,
    B, HQ, HK, D, HALF, N_Q_GROUPS,
    INTERLEAVED: tl.constexpr,
    BACKWARD: tl.constexpr,
    HAS_PASS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)  # int64: token * stride can exceed 2^31
    grp = tl.program_id(1)
    s_idx = tok // B
    b_idx = tok % B
    # Select the tensor this head group belongs to (scalar branch, uniform per program).
    if grp < N_Q_GROUPS:
        x_base = Q + s_idx * sq_s + b_idx * sq_b
        o_base = QO + s_idx * sqo_s + b_idx * sqo_b
        s_h = sq_h
        s_d = sq_d
        so_h = sqo_h
        n_h = HQ
        h0 = grp * BLOCK_H
    else:
        x_base = K + s_idx * sk_s + b_idx * sk_b
        o_base = KO + s_idx * sko_s + b_idx * sko_b
        s_h = sk_h
        s_d = sk_d
        so_h = sko_h
        n_h = HK
        h0 = (grp - N_Q_GROUPS) * BLOCK_H

    hs = h0 + tl.arange(0, BLOCK_H)
    hmask = hs < n_h
    i = tl.arange(0, BLOCK_HALF)
    imask = i < HALF

    ang = tl.load(FREQS + s_idx * stride_f + i, mask=imask, other=0.0).to(tl.float32)
    cos = tl.cos(ang)[None, :]
    sin = tl.sin(ang)[None, :]
    if BACKWARD:
        sin = -sin

    if INTERLEAVED:
        c1 = 2 * i
        c2 = 2 * i + 1
    else:
        c1 = i
        c2 = i + HALF
    m = hmask[:, None] & imask[None, :]
    x_rows = x_base + hs[:, None] * s_h
    o_rows = o_base + hs[:, None] * so_h
    x1 = tl.load(x_rows + c1[None, :] * s_d, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(x_rows + c2[None, :] * s_d, mask=m, other=0.0).to(tl.float32)
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    tl.store(o_rows + c1[None, :], o1.to(QO.dtype.element_ty), mask=m)
    tl.store(o_rows + c2[None, :], o2.to(QO.dtype.element_ty), mask=m)

    if HAS_PASS:
        # Channels [r, d) are copied unchanged (partial rotary).
        pc = 2 * HALF + tl.arange(0, BLOCK_PASS)
        pm = hmask[:, None] & (pc < D)[None, :]
        xp = tl.load(x_rows + pc[None, :] * s_d, mask=pm, other=0.0)
        tl.store(o_rows + pc[None, :], xp, mask=pm)


def _heads_per_program(h_max: int, block_half: int) -> int:
    # ~2048 rotated pairs per program: enough bytes in flight per program while
    # keeping s*b*groups programs to fill the GPU. Tests monkeypatch this to
    # force several (partially masked) head groups.
    return min(next_power_of_2(h_max), max(1, 2048 // block_half))


def _check_shapes(q, k, freqs):
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [s, b, h, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    s, b, _, d = q.shape
    if k.shape[0] != s or k.shape[1] != b or k.shape[3] != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on s, b and d")
    if freqs.dim() != 2 or freqs.shape[0] != s:
        raise ValueError(f"freqs must be [s={s}, r/2], got {tuple(freqs.shape)}")
    if 2 * freqs.shape[1] > d:
        raise ValueError(f"rotary dim r={2 * freqs.shape[1]} exceeds head dim d={d}")
    if q.dtype != k.dtype:
        raise ValueError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")


def rotary_fwd(q, k, freqs, interleaved, backward=False):
    """Rotate q and k (any strides) by +angle (or -angle if backward). Returns contiguous outputs."""
    s, b, hq, d = q.shape
    hk = k.shape[2]
    half = freqs.shape[1]
    qo = _utils.empty((s, b, hq, d), dtype=q.dtype, device=q.device)
    ko = _utils.empty((s, b, hk, d), dtype=k.dtype, device=k.device)
    if s * b == 0 or hq + hk == 0 or d == 0:
        return qo, ko
    freqs = freqs.to(device=q.device, dtype=torch.float32).contiguous()
    block_half = next_power_of_2(half)
    block_h = _heads_per_program(max(hq, hk), block_half)
    n_q_groups = triton.cdiv(hq, block_h)
    n_k_groups = triton.cdiv(hk, block_h)
    n_pass = d - 2 * half
    tile = block_h * max(block_half, next_power_of_2(max(n_pass, 1)))
    _rotary_kernel[(s * b, n_q_groups + n_k_groups)](
        q, k, qo, ko, freqs,
        *q.stride(), *k.stride(),
        *qo.stride()[:3], *ko.stride()[:3],
        freqs.stride(0),
        b, hq, hk, d, half, n_q_groups,
        INTERLEAVED=bool(interleaved),
        BACKWARD=bool(backward),
        HAS_PASS=n_pass > 0,
        BLOCK_H=block_h,
        BLOCK_HALF=block_half,
        BLOCK_PASS=next_power_of_2(max(n_pass, 1)),
        num_warps=4 if tile >= 1024 else 2,
    )
    return qo, ko


class RotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, freqs, interleaved):
        qo, ko = rotary_fwd(q, k, freqs, interleaved)
        ctx.save_for_backward(freqs)
        ctx.interleaved = interleaved
        return qo, ko

    @staticmethod
    def backward(ctx, dqo, dko):
        (freqs,) = ctx.saved_tensors
        dq, dk = rotary_fwd(dqo, dko, freqs, ctx.interleaved, backward=True)
        return dq, dk, None, None


def _rotate_ref(x, freqs, interleaved):
    cdt = torch.promote_types(x.dtype, torch.float32)
    half = freqs.shape[-1]
    r = 2 * half
    ang = freqs.to(cdt)[:, None, None, :]  # [s, 1, 1, r/2] broadcast over batch and heads
    cos, sin = ang.cos(), ang.sin()
    xr = x[..., :r].to(cdt)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if interleaved:
        out = torch.stack((o1, o2), dim=-1).flatten(-2)
    else:
        out = torch.cat((o1, o2), dim=-1)
    return torch.cat((out.to(x.dtype), x[..., r:]), dim=-1)


def apply_rotary_ref(q, k, freqs, interleaved=False):
    """Torch reference; computes in fp32 (or higher), returns the input dtype."""
    _check_shapes(q, k, freqs)
    return _rotate_ref(q, freqs, interleaved), _rotate_ref(k, freqs, interleaved)


def apply_rotary(q, k, freqs, interleaved=False, impl=None):
    """Rotary embedding of q [s,b,hq,d], k [s,b,hk,d] by angles freqs [s, r/2].

    Returns (q_out, k_out) in the input dtype. impl: "triton" | "torch" | None.
    """
    if use_triton(impl, q, k):
        _check_shapes(q, k, freqs)
        return RotaryFunction.apply(q, k, freqs, bool(interleaved))
    return apply_rotary_ref(q, k, freqs, interleaved)
