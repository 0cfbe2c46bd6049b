"""Train/valid/test GPT datasets from Megatron indexed data, via megatron-core's
BlendedMegatronDatasetBuilder, GPTDatasetConfig and GPTDataset.

Each sample is a dict of int64 "tokens" and "labels" (labels = tokens shifted
left by one: the builder draws seq_length + 1 tokens), float "loss_mask",
int64 "position_ids", plus "dataset_id" when several datasets are blended.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Optional, Sequence

logger = logging.getLogger(__name__)

_PREPROCESS_HINT = (
    "create it with tools/preprocess_data.py --input DOCS.jsonl --output-prefix OUT "
    "(which writes OUT_text_document.bin/.idx; pass OUT_text_document as --data-path)"
)


def _check_prefixes(prefixes: Sequence[str]) -> None:
    """Fail before megatron-core does, with a message that names the fix."""
    for prefix in prefixes:
        if prefix.endswith((".bin", ".idx")):
            raise FileNotFoundError(
                f"--data-path {prefix}: pass the prefix without the .bin/.idx extension")
        missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"--data-path {prefix}: {', '.join(missing)} not found; "
                                    + _PREPROCESS_HINT)


def _num_tokens(prefix: str) -> float:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    # Keep the dataset referenced while reading: its __del__ unmaps the .idx
    # buffer that sequence_lengths points into (a temporary would segfault).
    dataset = IndexedDataset(prefix)
    total = float(dataset.sequence_lengths.sum())
    del dataset
    return total


def _drop_empty_splits(config, prefixes: Sequence[str], num_samples: Sequence[int]) -> None:
    """Guard against a split that gets no documents.

    megatron-core hands split i the documents [round(lo*n), round(hi*n)); with
    few documents a small split (e.g. the 1 of "969,30,1") can get none, and
    GPTDataset then loops forever looking for enough tokens.  Such a split is
    dropped (returned as None) when no samples are requested from it, and is an
    error otherwise.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    counts = {p: len(IndexedDataset(p)) for p in prefixes}  # reads only the .idx header
    for split in Split:
        bookends = config.split_matrix[split.value]
        if bookends is None:
            continue
        for prefix, n in counts.items():
            docs = int(round(bookends[1] * n)) - int(round(bookends[0] * n))
            if docs > 0:
                continue
            if num_samples[split.value] > 0:
                raise ValueError(
                    f"--split {config.split!r} gives the {split.name} split no documents of "
                    f"{prefix} ({n} documents in all) but {num_samples[split.value]} "
                    f"{split.name} samples were requested; use more documents or a split "
                    f"with a larger {split.name} share")
            logger.warning("%s split has no documents in %s; not building it",
                           split.name, prefix)
            config.split_matrix[split.value] = None
            break


@contextlib.contextmanager
def _single_process_group_if_needed(needed: bool):
    """megatron-core's BlendedDataset calls torch.distributed.get_rank() when it
    writes its index cache, which raises without a process group.  For a blend
    with a cache directory in a single, non-distributed process we open a
    one-rank gloo group on an in-memory store for the duration of the build."""
    import torch

    if not needed or torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def build_gpt_datasets(
    data_path: list[str],
    split: str,
    seq_length: int,
    seed: int,
    tokenizer,
    train_valid_test_num_samples: tuple[int, int, int],
    data_cache_path: str | None = None,
    *,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
):
    """Build (train, valid, test) datasets; a split that gets no share of the
    documents (and is asked for no samples) comes back None.

    data_path: Megatron-LM's --data-path: ["prefix"], ["a", "b"] (weighted by
      their token counts) or ["0.3", "a", "0.7", "b"] (explicit weights).
    split: e.g. "969,30,1" (train,valid,test proportions of the documents).
    data_cache_path: where index caches go; default (megatron-core's): a folder
      {prefix}/cache/GPTDataset_indices next to each dataset.
    is_built_on_rank: megatron-core's hook for ranks that need no data (in
      Megatron-LM, only TP rank 0 of the first/last pipeline stage builds);
      default: every rank builds.  Under torch.distributed, call on all ranks:
      rank 0 builds the caches first, the others then load them (so ranks on
      other nodes need data_cache_path on a shared filesystem).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    if not data_path:
        raise ValueError("--data-path is empty; " + _PREPROCESS_HINT)
    if len(train_valid_test_num_samples) != 3:
        raise ValueError("train_valid_test_num_samples must be (train, valid, test)")
    prefixes, weights = get_blend_from_list(list(data_path))
    _check_prefixes(prefixes)
    if weights is None and len(prefixes) > 1:
        # megatron-core blends unweighted prefixes without oversampling, so a
        # split holds at most one epoch of each dataset however many samples
        # were asked for.  Weighting by token count keeps "blend by size" and
        # lets the datasets repeat like a single prefix does.
        weights = [_num_tokens(p) for p in prefixes]

    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split=split,
        path_to_cache=data_cache_path,
        tokenizer=tokenizer,
        # One stream of concatenated documents, causal attention across EOD
        # (as Megatron-LM's defaults); the kernel builds the causal mask itself.
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    sizes = [int(n) for n in train_valid_test_num_samples]
    _drop_empty_splits(config, prefixes, sizes)

    builder = BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, is_built_on_rank or (lambda: True), config)
    blended = not (len(prefixes) == 1 and weights is None)
    with _single_process_group_if_needed(blended and data_cache_path is not None):
        train, valid, test = builder.build()
    return train, valid, test
