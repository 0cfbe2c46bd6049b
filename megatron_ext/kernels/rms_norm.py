"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight.

Forward: one row per program, the whole row in registers (BLOCK = next_pow2(N)),
statistics in fp32; saves the per-row rstd so the backward needs no reduction
over x beyond one dot product.

Backward, with x_hat = x * rstd and g = dy * w:
    dx = rstd * (g - x_hat * mean(g * x_hat))
    dw = sum_rows(dy * x_hat)
dw is reduced deterministically: each of G programs owns rows pid, pid+G, ...
and writes its fp32 partial sum to row pid of a [G, N] buffer, which is then
summed in a fixed order (no atomics, so the bits are stable run to run).
"""
import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import as_rows, num_partial_programs, num_warps_bwd, num_warps_for, row_block, use_triton


@triton.jit
def _rms_norm_fwd_kernel(
    X, W, Y, RSTD,
    stride_x, stride_y,
    N, eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: rows * stride can exceed 2^31
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, X, W, RSTD, DX, DW_PARTIAL,
    stride_dy, stride_x, stride_dx,
    M, N,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
    # Walk rows pid, pid + G, ... by advancing 64-bit pointers (no int32 row*stride overflow).
    X += pid * stride_x
    DY += pid * stride_dy
    DX += pid * stride_dx
    for row in range(pid, M, n_prog):
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        x_hat = x * rstd
        g = dy * w
        c = tl.sum(g * x_hat, axis=0) / N
        dx = (g - x_hat * c) * rstd
        tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * x_hat
        X += n_prog * stride_x
        DY += n_prog * stride_dy
        DX += n_prog * stride_dx
    tl.store(DW_PARTIAL + pid * N + cols, dw_acc, mask=mask)


def rms_norm_fwd(x2, weight, eps):
    """x2: [M, N] with unit column stride. Returns (y [M, N] contiguous, rstd fp32 [M])."""
    M, N = x2.shape
    y = _utils.empty((M, N), dtype=x2.dtype, device=x2.device)
    rstd = _utils.empty((M,), dtype=torch.float32, device=x2.device)
    if M == 0:
        return y, rstd
    block = row_block(N)
    _rms_norm_fwd_kernel[(M,)](
        x2, weight, y, rstd,
        x2.stride(0), y.stride(0),
        N, eps,
        BLOCK=block, num_warps=num_warps_for(block),
    )
    return y, rstd


def rms_norm_bwd(dy2, x2, weight, rstd):
    """Returns (dx [M, N] in x dtype, dw [N] in weight dtype)."""
    M, N = x2.shape
    dx = _utils.empty((M, N), dtype=x2.dtype, device=x2.device)
    if M == 0:
        return dx, torch.zeros_like(weight)
    G = num_partial_programs(x2.device, M)
    dw_partial = _utils.empty((G, N), dtype=torch.float32, device=x2.device)
    block = row_block(N)
    _rms_norm_bwd_kernel[(G,)](
        dy2, x2, weight, rstd, dx, dw_partial,
        dy2.stride(0), x2.stride(0), dx.stride(0),
        M, N,
        BLOCK=block, num_warps=num_warps_bwd(block),
    )
    # torch's dim-0 sum uses a fixed reduction tree for a fixed shape: deterministic.
    dw = dw_partial.sum(0).to(weight.dtype)
    return dx, dw


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        N = x.shape[-1]
        assert weight.shape == (N,), f"weight shape {tuple(weight.shape)} != ({N},)"
        x2 = as_rows(x, N)
        weight = weight.contiguous()
        y, rstd = rms_norm_fwd(x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_bwd(as_rows(dy, x2.shape[1]), x2, weight, rstd)
        return (
            dx.view(ctx.x_shape),
            dw if ctx.needs_input_grad[1] else None,
            None,
        )


def rms_norm_ref(x, weight, eps=1e-5):
    """Torch reference: statistics in fp32 (or higher), output in x.dtype."""
    cdt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(cdt)
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(cdt)).to(x.dtype)


def rms_norm(x, weight, eps=1e-5, impl=None):
    """RMSNorm over the last dim. impl: "triton" | "torch" | None (Triton iff on CUDA)."""
    if use_triton(impl, x, weight):
        return RMSNormFunction.apply(x, weight, float(eps))
    return rms_norm_ref(x, weight, eps)
