"""RNG states to save with a checkpoint, as tensors and plain values so they load with weights_only=True."""

import random

import numpy as np
import torch
from megatron.core.tensor_parallel import get_cuda_rng_tracker


def capture_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states(),
             # Python's and numpy's generators (seeded by training/parallel.py) as tensors and numbers.
             "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "python" in state:  # absent in checkpoints written before these were saved
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
