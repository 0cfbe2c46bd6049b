"""Device and process-group set-up: CUDA with NCCL, or CPU processes with gloo.

megatron-core assumes CUDA in a bounded set of places (device allocation through
``torch.cuda.current_device()``, CUDA RNG state, literal ``device="cuda"`` factories,
``Tensor.cuda()``, and a grad-type assertion in gradient clipping). On CPU this module,
and no other, redirects those to the CPU so the unchanged megatron-core code runs on gloo.
The GPU path never touches any of it.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Platform:
    device: torch.device
    backend: str
    rank: int
    world_size: int
    local_rank: int


def resolve_device(name: str | None) -> str:
    """'cuda' when available unless the user asked for something else."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but no CUDA device is visible; use --device cpu")
    if name not in ("cuda", "cpu"):
        raise SystemExit(f"--device {name!r} is not supported: use cuda or cpu")
    return name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(device: str | None = None, timeout_minutes: int = 10) -> Platform:
    """Start torch.distributed from torchrun's environment (or as a single process)."""
    device = resolve_device(device)
    if "RANK" not in os.environ:  # plain `python pretrain_llama.py`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    if device == "cuda":
        torch.cuda.set_device(local_rank)
        backend, torch_device = "nccl", torch.device("cuda", local_rank)
    else:
        enable_cpu_redirection()
        backend, torch_device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return Platform(torch_device, backend, rank, world_size, local_rank)


# ---------------------------------------------------------------------------------------
# CPU redirection of megatron-core's CUDA assumptions
# ---------------------------------------------------------------------------------------

def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int means a CUDA ordinal (torch.cuda.current_device() returns one).
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to CPU in every torch call made while it is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # clip_grads asserts fp32 grads are 'torch.cuda.FloatTensor'.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if name.startswith("torch.") else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to:
            args = tuple("cpu" if _is_cuda_device(a) and not isinstance(a, bool) and i > 0 else a
                         for i, a in enumerate(args))
        return func(*args, **kwargs)


_CPU_MODE: _CudaToCpuMode | None = None


def enable_cpu_redirection() -> None:
    """Point megatron-core's CUDA device/RNG helpers at the CPU. Idempotent."""
    global _CPU_MODE
    if _CPU_MODE is not None:
        return
    cuda = torch.cuda
    # A device object, not an ordinal: autograd's backward can run outside the function mode below.
    cuda.current_device = lambda: torch.device("cpu")
    cuda.synchronize = lambda *a, **k: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = torch.manual_seed  # megatron's RNG tracker seeds and snapshots it
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state

    from megatron.core.tensor_parallel import random as tp_random

    tp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    _CPU_MODE = _CudaToCpuMode()
    _CPU_MODE.__enter__()  # stays active for the life of the process
