"""Shared helpers for the kernel package: backend selection and launch heuristics."""
import os

import torch
import triton
from triton.runtime.jit import JITFunction

_IMPLS = ("triton", "torch", None)

# Tests set this to NaN-fill every buffer the kernels write into, so an element
# a kernel fails to write shows up as NaN instead of stale memory.
POISON_BUFFERS = False


def empty(shape, dtype, device):
    """torch.empty for kernel outputs/partials (NaN-filled when POISON_BUFFERS)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON_BUFFERS:
        t.fill_(float("nan"))
    return t


@triton.jit
def _probe_kernel():
    pass


def interpret_mode() -> bool:
    """True when this package's kernels run in Triton's CPU interpreter (how CI tests them).

    Triton picks compiled vs interpreted when @triton.jit runs, i.e. at import,
    so the env var alone is not enough: check what the kernels actually are.
    """
    interpreted = not isinstance(_probe_kernel, JITFunction)
    env = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
    if env and not interpreted:
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton / megatron_ext.kernels were imported, "
            "so the kernels were built for the GPU; set it before the first import of triton."
        )
    return interpreted


def use_triton(impl, *tensors) -> bool:
    """Resolve ``impl`` to a backend.

    None -> Triton for CUDA tensors, torch reference otherwise (never silently
    switch to the interpreter: it is orders of magnitude slower).
    "triton" on CPU is only possible under TRITON_INTERPRET=1.
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be 'triton', 'torch' or None, got {impl!r}")
    if impl == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    if impl is None:
        return on_cuda
    if not on_cuda and not interpret_mode():
        raise RuntimeError(
            "impl='triton' was requested for CPU tensors, but Triton kernels only run on "
            "CUDA tensors, or on CPU under the Triton interpreter: set the environment "
            "variable TRITON_INTERPRET=1 before importing triton, or use impl='torch'."
        )
    return True


# Largest row a one-row-per-program kernel keeps in registers; wider rows would
# spill (or fail to compile), and no LLaMA-family hidden size comes close.
MAX_FUSED_SIZE = 65536


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def row_block(n: int) -> int:
    block = next_power_of_2(n)
    if block > MAX_FUSED_SIZE:
        raise ValueError(f"hidden size {n} exceeds the fused-row limit of {MAX_FUSED_SIZE}")
    return block


def num_warps_for(block: int) -> int:
    # Enough threads that each holds a few dozen row elements at most.
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def num_warps_bwd(block: int) -> int:
    # The norm backward keeps x, dy, w and the fp32 dw (and db) accumulators live
    # per row: at the forward's warp count a 4096 row needs ~180 registers/thread
    # (sm_90, LayerNorm). Doubling the warps halves the per-thread share
    # (~86 regs) and avoids spills up to 8192 columns.
    w = num_warps_for(block)
    return min(32, 2 * w) if block >= 4096 else w


def as_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """View ``x`` as [rows, n] with unit column stride; copies only when no such view exists.

    The kernels take the row stride as an argument, so e.g. a slice of a wider
    activation is used in place.
    """
    x2 = x.reshape(-1, n)  # a view whenever the leading dims can be flattened
    if n > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


def num_partial_programs(device: torch.device, rows: int) -> int:
    """Programs for the deterministic weight-gradient reduction.

    Each program owns a fixed, strided set of rows and writes one fp32 partial
    row; the partials are then summed in a fixed order. A couple of programs per
    SM keeps the GPU full while bounding the partial buffer. Under the CPU
    interpreter a small count still exercises the multi-row loop.
    """
    if device.type == "cuda":
        cap = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        cap = 4
    return max(1, min(rows, cap))
