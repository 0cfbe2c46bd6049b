"""LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * weight + bias.

Forward: one row per program, whole row in registers, two-pass mean/variance in
fp32 (the row is already loaded, so the stable two-pass form costs nothing);
saves per-row mean and rstd.

Backward, with x_hat = (x - mean) * rstd and g = dy * w:
    dx = rstd * (g - x_hat * mean(g * x_hat) - mean(g))
    dw = sum_rows(dy * x_hat),  db = sum_rows(dy)
dw/db use the same deterministic partial-sum scheme as RMSNorm: G programs
each own a fixed strided set of rows, write fp32 partials to [G, N] buffers,
which are summed in a fixed order (no atomics).
"""
import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import as_rows, num_partial_programs, num_warps_bwd, num_warps_for, row_block, use_triton


@triton.jit
def _layer_norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD,
    stride_x, stride_y,
    N, eps,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: rows * stride can exceed 2^31
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)  # padded lanes must not enter the variance
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DX, DW_PARTIAL, DB_PARTIAL,
    stride_dy, stride_x, stride_dx,
    M, N,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK], dtype=tl.float32)
    # Walk rows pid, pid + G, ... by advancing 64-bit pointers (no int32 row*stride overflow).
    X += pid * stride_x
    DY += pid * stride_dy
    DX += pid * stride_dx
    for row in range(pid, M, n_prog):
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        x_hat = tl.where(mask, (x - mean) * rstd, 0.0)
        g = dy * w
        c1 = tl.sum(g * x_hat, axis=0) / N
        c2 = tl.sum(g, axis=0) / N
        dx = (g - x_hat * c1 - c2) * rstd
        tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * x_hat
        if HAS_BIAS:
            db_acc += dy
        X += n_prog * stride_x
        DY += n_prog * stride_dy
        DX += n_prog * stride_dx
    tl.store(DW_PARTIAL + pid * N + cols, dw_acc, mask=mask)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * N + cols, db_acc, mask=mask)


def layer_norm_fwd(x2, weight, bias, eps):
    """x2: [M, N] with unit column stride. Returns (y, mean fp32 [M], rstd fp32 [M])."""
    M, N = x2.shape
    y = _utils.empty((M, N), dtype=x2.dtype, device=x2.device)
    mean = _utils.empty((M,), dtype=torch.float32, device=x2.device)
    rstd = _utils.empty((M,), dtype=torch.float32, device=x2.device)
    if M == 0:
        return y, mean, rstd
    block = row_block(N)
    _layer_norm_fwd_kernel[(M,)](
        x2, weight, bias if bias is not None else weight, y, mean, rstd,
        x2.stride(0), y.stride(0),
        N, eps,
        HAS_BIAS=bias is not None,
        BLOCK=block, num_warps=num_warps_for(block),
    )
    return y, mean, rstd


def layer_norm_bwd(dy2, x2, weight, mean, rstd, has_bias):
    """Returns (dx in x dtype, dw in weight dtype, db fp32 or None)."""
    M, N = x2.shape
    dx = _utils.empty((M, N), dtype=x2.dtype, device=x2.device)
    if M == 0:
        zeros = torch.zeros((N,), dtype=torch.float32, device=x2.device)
        return dx, zeros.to(weight.dtype), zeros if has_bias else None
    G = num_partial_programs(x2.device, M)
    dw_partial = _utils.empty((G, N), dtype=torch.float32, device=x2.device)
    db_partial = _utils.empty((G, N), dtype=torch.float32, device=x2.device) if has_bias else dw_partial
    block = row_block(N)
    _layer_norm_bwd_kernel[(G,)](
        dy2, x2, weight, mean, rstd, dx, dw_partial, db_partial,
        dy2.stride(0), x2.stride(0), dx.stride(0),
        M, N,
        HAS_BIAS=has_bias,
        BLOCK=block, num_warps=num_warps_bwd(block),
    )
    # torch's dim-0 sum uses a fixed reduction tree for a fixed shape: deterministic.
    dw = dw_partial.sum(0).to(weight.dtype)
    db = db_partial.sum(0) if has_bias else None
    return dx, dw, db


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        N = x.shape[-1]
        assert weight.shape == (N,), f"weight shape {tuple(weight.shape)} != ({N},)"
        assert bias is None or bias.shape == (N,), f"bias shape {tuple(bias.shape)} != ({N},)"
        x2 = as_rows(x, N)
        weight = weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        y, mean, rstd = layer_norm_fwd(x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.x_shape = x.shape
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        has_bias = ctx.bias_dtype is not None
        dx, dw, db = layer_norm_bwd(as_rows(dy, x2.shape[1]), x2, weight, mean, rstd, has_bias)
        return (
            dx.view(ctx.x_shape),
            dw if ctx.needs_input_grad[1] else None,
            db.to(ctx.bias_dtype) if has_bias and ctx.needs_input_grad[2] else None,
            None,
        )


def layer_norm_ref(x, weight, bias=None, eps=1e-5):
    """Torch reference: statistics in fp32 (or higher), output in x.dtype."""
    cdt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(cdt)
    mean = xf.mean(-1, keepdim=True)
    xc = xf - mean
    rstd = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    y = xc * rstd * weight.to(cdt)
    if bias is not None:
        y = y + bias.to(cdt)
    return y.to(x.dtype)


def layer_norm(x, weight, bias=None, eps=1e-5, impl=None):
    """LayerNorm over the last dim (bias may be None). impl: "triton" | "torch" | None."""
    if use_triton(impl, x, weight, bias):
        return LayerNormFunction.apply(x, weight, bias, float(eps))
    return layer_norm_ref(x, weight, bias, eps)
