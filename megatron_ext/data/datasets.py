"""Train/valid/test GPT datasets from Megatron indexed data, via megatron-core's
BlendedMegatronDatasetBuilder, GPTDatasetConfig and GPTDataset.

Each sample is a dict of int64 "tokens" and "labels" (labels = tokens shifted
left by one: the builder draws seq_length + 1 tokens), float "loss_mask",
int64 "position_ids", plus "dataset_id" when several datasets are blended.
Where megatron-core's builder needs help (empty splits, unweighted blends, a blend's index cache in a
single process), the workaround lives in megatron_ext/megatron_compat.py.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from megatron_ext.megatron_compat import drop_empty_splits, single_process_group_if_needed, token_count_weights

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


# --- integrity of the .bin/.idx pair -------------------------------------------
# megatron-core's reader trusts the .idx: a .bin cut short (an interrupted copy)
# only fails when a sample from the missing tail is read, mid-run, and an .idx
# of another dataset fails with a numpy offset error naming no file.  Both are
# caught at start-up from the .idx header and its last sequence pointer: O(1)
# reads whatever the dataset's size.

_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_INDEX_HEADER_BYTES = 34  # magic 9, version 8, dtype code 1, sequence count 8, document count 8
_TOKEN_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron-core's DType codes
_REMAKE_HINT = ("re-run tools/preprocess_data.py to write both files again (or copy the pair again "
                "from where it was made)")


class DataIntegrityError(ValueError):
    """A .bin/.idx pair that cannot be the output of one preprocessing run."""


def _read_index_header(idx_path: str) -> tuple[int, int, int]:
    """(bytes per token, sequence count, document count) of a Megatron .idx file."""
    import struct

    with open(idx_path, "rb") as f:
        header = f.read(_INDEX_HEADER_BYTES)
    if len(header) < _INDEX_HEADER_BYTES or header[:9] != _INDEX_MAGIC:
        raise DataIntegrityError(f"{idx_path} is not a Megatron index file (bad header); " + _REMAKE_HINT)
    version, code, sequences, documents = struct.unpack("<QBQQ", header[9:])
    if version != 1 or code not in _TOKEN_BYTES:
        raise DataIntegrityError(f"{idx_path}: unknown index version {version} or token type {code}; "
                                 + _REMAKE_HINT)
    return _TOKEN_BYTES[code], sequences, documents


def check_bin_matches_idx(prefix: str) -> None:
    """Refuse a .bin whose size is not the byte count its .idx describes."""
    import numpy

    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    token_bytes, sequences, documents = _read_index_header(idx_path)
    arrays = _INDEX_HEADER_BYTES + 12 * sequences + 8 * documents  # int32 lengths, int64 pointers, int64 doc ids
    idx_size = os.path.getsize(idx_path)
    if idx_size not in (arrays, arrays + sequences):  # + one int8 mode per sequence when multimodal
        raise DataIntegrityError(
            f"{idx_path} is truncated or corrupt: {idx_size} bytes, but its header describes "
            f"{sequences} sequences ({arrays} bytes); " + _REMAKE_HINT)
    expected = 0
    if sequences:
        lengths = numpy.memmap(idx_path, dtype=numpy.int32, mode="r", offset=_INDEX_HEADER_BYTES,
                               shape=(sequences,))
        pointers = numpy.memmap(idx_path, dtype=numpy.int64, mode="r",
                                offset=_INDEX_HEADER_BYTES + 4 * sequences, shape=(sequences,))
        expected = int(pointers[-1]) + int(lengths[-1]) * token_bytes
        del lengths, pointers
    actual = os.path.getsize(bin_path)
    if actual == expected:
        return
    why = ("the .bin is truncated (an interrupted copy or write?) or the .idx belongs to another dataset"
           if actual < expected else "the .idx belongs to another dataset (or the .bin was appended to)")
    raise DataIntegrityError(
        f"--data-path {prefix}: {bin_path} holds {actual} bytes but {idx_path} describes {expected} "
        f"({expected // token_bytes} tokens of {token_bytes} bytes): {why}; " + _REMAKE_HINT)


# --- token ids within the vocabulary ---------------------------------------------
# An id >= the vocabulary (data tokenized with another tokenizer) gives an
# IndexError deep in the embedding at TP1 and a silent INF loss at TP>1 (the
# vocab-parallel embedding masks it).  Each sample is checked as it is read:
# O(seq_length) per sample, nothing at start-up, so TB-sized datasets cost no
# scan, and every id the model will see is covered.

class TokenIdError(ValueError):
    """A sample holds a token id outside the model's vocabulary."""


class TokenIdCheck:
    """Wraps a dataset of {"tokens", "labels", ...} samples; raises TokenIdError on an id outside
    [0, vocab_size).  sources[dataset_id] names the --data-path prefix a blended sample came from."""

    def __init__(self, dataset, vocab_size: int, sources: Sequence[str]):
        self.dataset, self.vocab_size, self.sources = dataset, int(vocab_size), list(sources)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        for key in ("tokens", "labels"):
            ids = sample[key]
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.vocab_size:
                self._refuse(sample, index, high if high >= self.vocab_size else low)
        return sample

    def _refuse(self, sample, index, bad_id: int):
        source_id = int(sample.get("dataset_id", 0))
        source = self.sources[source_id] if source_id < len(self.sources) else f"source {source_id}"
        raise TokenIdError(
            f"--data-path {source}: token id {bad_id} (sample {index}) is outside the vocabulary of "
            f"{self.vocab_size} ids (0..{self.vocab_size - 1}): the data was tokenized with another "
            "tokenizer than --tokenizer-model / --vocab-size give; train with the tokenizer that "
            "preprocessed it, or re-run tools/preprocess_data.py with this one")


def check_token_ids(dataset, vocab_size: int, data_path: Sequence[str]):
    """dataset wrapped in TokenIdCheck (None stays None)."""
    if dataset is None:
        return None
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, _ = get_blend_from_list(list(data_path))
    return TokenIdCheck(dataset, vocab_size, prefixes)


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
    for prefix in prefixes:
        check_bin_matches_idx(prefix)
    if weights is None and len(prefixes) > 1:
        # megatron-core blends unweighted prefixes without oversampling, so a
        # split holds at most one epoch of each dataset however many samples
        # were asked for.  Weighting by token count keeps "blend by size" and
        # lets the datasets repeat like a single prefix does.
        weights = token_count_weights(prefixes)

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
    drop_empty_splits(config, prefixes, sizes)

    builder = BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, is_built_on_rank or (lambda: True), config)
    blended = not (len(prefixes) == 1 and weights is None)
    with single_process_group_if_needed(blended and data_cache_path is not None):
        train, valid, test = builder.build()
    return train, valid, test
