"""SwiGLU on megatron's fused fc1 output x = [..., 2F] (gate first, then up).

    y = silu(gate) * up
Backward (s = sigmoid(gate)):
    d_gate = dy * up * s * (1 + gate * (1 - s))
    d_up   = dy * gate * s
Purely elementwise and memory bound: programs tile (row, column block) so any
F works with masking and no row has to fit in registers. The backward
recomputes silu from x instead of saving y (saves F elements of memory per row
for two cheap transcendentals) and writes both halves of dx in one pass.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _utils
from ._utils import as_rows, next_power_of_2, use_triton


@triton.jit
def _swiglu_fwd_kernel(
    X, Y,
    stride_x, stride_y,
    F_DIM,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F_DIM
    x_row = X + row * stride_x
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + F_DIM + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    DY, X, DX,
    stride_dy, stride_x, stride_dx,
    F_DIM,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F_DIM
    x_row = X + row * stride_x
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + F_DIM + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(gate)
    silu = gate * s
    d_gate = dy * up * s * (1.0 + gate * (1.0 - s))
    d_up = dy * silu
    dx_row = DX + row * stride_dx
    tl.store(dx_row + cols, d_gate.to(DX.dtype.element_ty), mask=mask)
    tl.store(dx_row + F_DIM + cols, d_up.to(DX.dtype.element_ty), mask=mask)


def _launch_cfg(f):
    # 1024 columns x 4 warps: 8 elements per thread per operand, enough bytes in
    # flight per SM to saturate HBM; smaller F uses one smaller block.
    block = min(1024, next_power_of_2(f))
    return block, (4 if block >= 512 else 2)


def swiglu_fwd(x2):
    """x2: [M, 2F] with unit column stride. Returns y [M, F] contiguous."""
    M, two_f = x2.shape
    f = two_f // 2
    y = _utils.empty((M, f), dtype=x2.dtype, device=x2.device)
    if M == 0 or f == 0:
        return y
    block, warps = _launch_cfg(f)
    _swiglu_fwd_kernel[(M, triton.cdiv(f, block))](
        x2, y, x2.stride(0), y.stride(0), f, BLOCK=block, num_warps=warps,
    )
    return y


def swiglu_bwd(dy2, x2):
    """Returns dx [M, 2F] contiguous in x dtype."""
    M, two_f = x2.shape
    f = two_f // 2
    dx = _utils.empty((M, two_f), dtype=x2.dtype, device=x2.device)
    if M == 0 or f == 0:
        return dx
    block, warps = _launch_cfg(f)
    _swiglu_bwd_kernel[(M, triton.cdiv(f, block))](
        dy2, x2, dx, dy2.stride(0), x2.stride(0), dx.stride(0), f, BLOCK=block, num_warps=warps,
    )
    return dx


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        two_f = x.shape[-1]
        assert two_f % 2 == 0, f"swiglu input last dim must be even (gate|up), got {two_f}"
        x2 = as_rows(x, two_f)
        y = swiglu_fwd(x2)
        ctx.save_for_backward(x2)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], two_f // 2)

    @staticmethod
    def backward(ctx, dy):
        (x2,) = ctx.saved_tensors
        dx = swiglu_bwd(as_rows(dy, x2.shape[1] // 2), x2)
        return dx.view(ctx.x_shape)


def swiglu_ref(x):
    """Torch reference: computes in fp32 (or higher), returns x.dtype."""
    gate, up = torch.chunk(x, 2, dim=-1)
    cdt = torch.promote_types(x.dtype, torch.float32)
    return (F.silu(gate.to(cdt)) * up.to(cdt)).to(x.dtype)


def swiglu(x, impl=None):
    """silu(gate) * up for x = [..., 2F] (gate first). impl: "triton" | "torch" | None."""
    if use_triton(impl, x):
        return SwiGLUFunction.apply(x)
    return swiglu_ref(x)
