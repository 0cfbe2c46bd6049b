"""megatron-core's parallel state and the RNG seeding that goes with it."""

import random

import numpy as np
import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed


def initialize_parallel(parallel, seed: int) -> None:
    """megatron-core's groups for a ParallelConfig, then every RNG seeded."""
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
    )
    seed_everything(seed)


def seed_everything(seed: int) -> None:
    # Weights do not depend on these (models/init.py); dropout and data shuffling might.
    random.seed(seed)
    np.random.seed(seed)
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)


def data_parallel_rank_and_size() -> tuple[int, int]:
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def is_last_rank() -> bool:
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1
