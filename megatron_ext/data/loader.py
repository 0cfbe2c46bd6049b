"""Micro-batches for this data-parallel rank, resumable from a consumed-sample count.

Each global batch is a run of consecutive samples; data-parallel rank r takes its micro-batch
slice of every group of micro_batch_size x DP samples (Megatron-LM's order), so a run resumes
exactly, and DP layouts see the same global batches as the single-process run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron_ext.training.stopping import ignore_exit_signals


class PretrainingSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __len__(self):
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size * self.dp_size)

    def __iter__(self):
        group = self.micro_batch_size * self.dp_size
        start = self.dp_rank * self.micro_batch_size
        for first in range(self.consumed_samples, self.total_samples - group + 1, group):
            yield list(range(first + start, first + start + self.micro_batch_size))


def _collate(samples: list[dict]) -> dict:
    return {key: torch.as_tensor(np.stack([s[key] for s in samples])) for key in samples[0]}


def micro_batches(dataset: Dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                  dp_size: int, num_workers: int = 0, cycle: bool = False):
    """Iterator of micro-batch dicts; `cycle` restarts at sample 0 when exhausted (evaluation)."""
    while True:
        sampler = PretrainingSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp_size)
        if len(sampler) == 0:
            raise ValueError(f"dataset of {len(dataset)} samples cannot fill a micro-batch group of "
                             f"{micro_batch_size} x {dp_size} from sample {consumed_samples}")
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                            collate_fn=_collate, persistent_workers=False,
                            # a worker killed by Slurm's SIGTERM would fail the step --exit-signal-handler finishes
                            worker_init_fn=ignore_exit_signals if num_workers else None)
        yield from loader
        if not cycle:
            return
        consumed_samples = 0


class MockGPTDataset(Dataset):
    """Random tokens, a fixed function of (seed, index): benchmarks and tests without files."""

    def __init__(self, num_samples: int, seq_length: int, vocab_size: int, seed: int):
        self.num_samples, self.seq_length, self.vocab_size, self.seed = num_samples, seq_length, vocab_size, seed

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        text = rng.integers(0, self.vocab_size, self.seq_length + 1, dtype=np.int64)
        return {
            "tokens": text[:-1],
            "labels": text[1:],
            "loss_mask": np.ones(self.seq_length, dtype=np.float32),
            "position_ids": np.arange(self.seq_length, dtype=np.int64),
        }
