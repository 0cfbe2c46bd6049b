"""Fine-tuning data: conversations (masked: only what the chat format trains) blended with plain text (every
token trained), packed into --seq-length rows, reshuffled every epoch from --seed.

A --data-path prefix with PREFIX_loss_mask.bin/.idx beside it is conversation data (written by
tools/preprocess_sft.py: one sequence per conversation, and its 0/1 mask with the same lengths); any other
prefix is plain text as tools/preprocess_data.py writes it, cut into pieces of at most --seq-length + 1 tokens.
Each source is split by --split (first share train, second validation), its units shuffled per epoch and
packed (data/packing.py); sources are blended by their --data-path weights (default: their row counts),
choosing at every sample the source furthest behind its share (as megatron-core's blending does). Sample i
is a pure function of (i, seed, files), so a run resumes exactly and every layout sees the same batches.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np

from megatron_ext.data.packing import PackingStats, build_row, plan_rows

MASK_SUFFIX = "_loss_mask"


def is_conversation_prefix(prefix: str) -> bool:
    return os.path.isfile(prefix + MASK_SUFFIX + ".idx")


def has_conversation_data(data_path) -> bool:
    from megatron.core.datasets.utils import get_blend_from_list

    if not data_path:
        return False
    prefixes, _ = get_blend_from_list(list(data_path))
    return any(is_conversation_prefix(p) for p in prefixes)


def recorded_chat_formats(data_path) -> dict:
    """{conversation prefix: the chat format its .json record names}, for the prefixes that record one."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, _ = get_blend_from_list(list(data_path))
    return {p: sidecar(p)["chat_format"] for p in prefixes
            if is_conversation_prefix(p) and sidecar(p).get("chat_format")}


def _indexed(prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for path in (prefix + ".bin", prefix + ".idx"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--data-path {prefix}: {path} not found; write conversation data with "
                                    "tools/preprocess_sft.py and plain text with tools/preprocess_data.py")
    return IndexedDataset(prefix)


class ConversationSource:
    """Units are whole conversations with their loss masks."""

    kind = "conversations"

    def __init__(self, prefix: str, vocab_size: int | None = None):
        self.prefix = prefix
        self.tokens, self.masks = _indexed(prefix), _indexed(prefix + MASK_SUFFIX)
        self.lengths = np.asarray(self.tokens.sequence_lengths, dtype=np.int64)
        if not np.array_equal(self.lengths, np.asarray(self.masks.sequence_lengths)):
            raise ValueError(f"{prefix}: the token and loss-mask files disagree on conversation lengths (written by "
                             "different runs?); write both again with tools/preprocess_sft.py")
        self.info = sidecar(prefix)
        recorded = self.info.get("vocab_size")
        if vocab_size is not None and recorded is not None and recorded > vocab_size:
            raise ValueError(
                f"{prefix} was tokenised with a {recorded}-id vocabulary (special tokens "
                f"{self.info.get('special_tokens')}) but this run's tokenizer has {vocab_size}: pass the same "
                f"tokenizer flags as tools/preprocess_sft.py did (--special-tokens "
                f"{','.join(self.info.get('special_tokens') or []) or '...'})")

    def __len__(self):
        return len(self.lengths)

    def unit(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.tokens[index], dtype=np.int64), np.asarray(self.masks[index], dtype=np.float32))


class TextSource:
    """Units are pieces of plain-text documents, every token trained."""

    kind = "text"

    def __init__(self, prefix: str, seq_length: int):
        self.prefix = prefix
        self.tokens = _indexed(prefix)
        doc_lengths = np.asarray(self.tokens.sequence_lengths, dtype=np.int64)
        piece = seq_length + 1
        starts, lengths, docs = [], [], []
        for doc, length in enumerate(doc_lengths):
            for offset in range(0, int(length), piece):
                starts.append(offset)
                lengths.append(min(piece, int(length) - offset))
                docs.append(doc)
        self.docs, self.starts = np.asarray(docs, np.int64), np.asarray(starts, np.int64)
        self.lengths = np.asarray(lengths, np.int64)
        self.info = {}

    def __len__(self):
        return len(self.lengths)

    def unit(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self.tokens.get(int(self.docs[index]), offset=int(self.starts[index]),
                                         length=int(self.lengths[index])), dtype=np.int64)
        return ids, np.ones(len(ids), dtype=np.float32)


def sidecar(prefix: str) -> dict:
    """The .json record tools/preprocess_sft.py (or preprocess_preference.py) writes beside its files."""
    path = prefix + ".json"
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def split_range(count: int, split: str, part: int) -> tuple[int, int]:
    """[start, end) of split part 0 (train) or 1 (validation), as megatron-core splits documents."""
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    shares = parse_and_normalize_split(split)
    bounds = [0]
    for share in shares:
        bounds.append(bounds[-1] + int(round(share * count)))
    bounds[-1] = count
    return min(bounds[part], count), min(bounds[part + 1], count)


class PackedSource:
    """One source's split: its rows, epoch after epoch, each epoch a new shuffle of its units."""

    def __init__(self, source, unit_range: tuple[int, int], seq_length: int, seed: int, source_index: int,
                 packing: str, overlong: str, shuffle: bool = True):
        self.source, self.seq_length, self.seed, self.index = source, seq_length, seed, source_index
        self.units = np.arange(*unit_range, dtype=np.int64)
        self.packing, self.overlong, self.shuffle = packing, overlong, shuffle
        self._plans: dict[int, list] = {}     # the last two epochs' rows (a DataLoader reads in order)
        self._counts: list[int] = []           # rows in each epoch planned so far
        self.first_epoch_stats = PackingStats()
        if len(self.units):
            self.epoch_rows(0, self.first_epoch_stats)

    def epoch_rows(self, epoch: int, stats: PackingStats | None = None) -> list:
        if epoch not in self._plans:
            order = self.units
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.index, epoch]).permutation(self.units)
            rows = plan_rows(order, self.source.lengths, self.seq_length, self.packing, self.overlong, stats)
            if not rows:
                raise ValueError(f"{self.source.prefix}: no unit fits a row of {self.seq_length} positions "
                                 f"(all dropped: --sft-overlong {self.overlong})")
            self._plans = {k: v for k, v in self._plans.items() if k == epoch - 1}
            self._plans[epoch] = rows
            if epoch == len(self._counts):
                self._counts.append(len(rows))
        return self._plans[epoch]

    def rows_per_epoch(self) -> int:
        return self.first_epoch_stats.rows

    def rows_in_epochs(self, epochs: int) -> int:
        """Rows in the first `epochs` epochs (packing a new shuffle can change the count by a few)."""
        for epoch in range(len(self._counts), epochs):
            self.epoch_rows(epoch)
        return sum(self._counts[:epochs])

    def row(self, k: int) -> np.ndarray:
        """The k-th row of this source over all its epochs."""
        epoch = 0
        while True:
            if epoch == len(self._counts):
                self.epoch_rows(epoch)
            if k < self._counts[epoch]:
                return self.epoch_rows(epoch)[k]
            k -= self._counts[epoch]
            epoch += 1


def blend_order(weights: list[float], count: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, row within source) of samples 0..count-1: each sample goes to the source furthest behind
    its weight's share."""
    if len(weights) == 1:
        return np.zeros(count, dtype=np.int64), np.arange(count, dtype=np.int64)
    total = float(sum(weights))
    shares = [w / total for w in weights]
    sources = np.empty(count, dtype=np.int64)
    rows = np.empty(count, dtype=np.int64)
    taken = [0] * len(shares)
    for i in range(count):
        deficits = [share * (i + 1) - n for share, n in zip(shares, taken)]
        choice = deficits.index(max(deficits))
        sources[i], rows[i] = choice, taken[choice]
        taken[choice] += 1
    return sources, rows


class SFTDataset:
    """`num_samples` packed rows blended over the sources (the map-style dataset the loader reads)."""

    def __init__(self, packed: list[PackedSource], weights: list[float], num_samples: int, seq_length: int,
                 pad_id: int):
        self.packed, self.seq_length, self.pad_id = packed, seq_length, pad_id
        self.num_samples = num_samples
        self.sources, self.rows = blend_order(weights, num_samples)

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        packed = self.packed[self.sources[index]]
        units = packed.row(int(self.rows[index]))
        sample = build_row([packed.source.unit(int(u)) for u in units], self.seq_length, self.pad_id)
        sample["dataset_id"] = np.int64(packed.index)  # names the source in a bad-token-id error
        return sample


@lru_cache(maxsize=8)
def _open_sources(prefixes: tuple, seq_length: int, vocab_size: int | None) -> tuple:
    return tuple(ConversationSource(p, vocab_size) if is_conversation_prefix(p) else TextSource(p, seq_length)
                 for p in prefixes)


def packed_sources(data, training, part: int, vocab_size: int | None = None) -> tuple[list, list]:
    """(PackedSource per source, blend weights) of split `part` for DataConfig/TrainingConfig."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = get_blend_from_list(list(data.data_path))
    sources = _open_sources(tuple(prefixes), training.seq_length, vocab_size)
    packed = [PackedSource(source, split_range(len(source), data.split, part), training.seq_length,
                           training.seed + part, index, data.sft_packing, data.sft_overlong)
              for index, source in enumerate(sources)]
    packed = [(p, w) for p, w in zip(packed, weights or [None] * len(packed)) if p.rows_per_epoch()]
    if not packed:
        return [], []
    weights = [w if w is not None else p.rows_per_epoch() for p, w in packed]
    return [p for p, _ in packed], weights


def epoch_samples(data, training, epochs: int) -> int:
    """Samples (rows) in `epochs` passes over the training split of every source."""
    packed, _ = packed_sources(data, training, 0)
    if not packed:
        raise SystemExit(f"error: --data-path {' '.join(data.data_path)} has no training rows for --split {data.split}")
    return sum(p.rows_in_epochs(epochs) for p in packed)


def build_sft_datasets(data, training, train_samples: int, valid_samples: int, pad_id: int, vocab_size: int):
    """(train, validation or None) SFTDatasets, and a start-up summary of the packing."""
    datasets, lines = [], []
    for part, count in ((0, train_samples), (1, valid_samples)):
        packed, weights = packed_sources(data, training, part, vocab_size) if count else ([], [])
        datasets.append(SFTDataset(packed, weights, count, training.seq_length, pad_id) if packed else None)
        if part == 0:
            if not packed:
                raise SystemExit(f"error: --data-path has no training rows for --split {data.split}")
            lines = [describe_packing(p, w / sum(weights), data) for p, w in zip(packed, weights)]
    return datasets[0], datasets[1], "\n".join(lines)


def describe_packing(packed: PackedSource, share: float, data) -> str:
    stats = packed.first_epoch_stats
    overlong = (f", {stats.truncated} truncated to {packed.seq_length + 1} tokens" if data.sft_overlong == "truncate"
                else f", {stats.dropped} dropped as longer than {packed.seq_length + 1} tokens")
    return (f" > {packed.source.kind} {packed.source.prefix}: share {share:.3f}, {stats.units} units in "
            f"{stats.rows} rows per epoch ({data.sft_packing}), packing efficiency {stats.efficiency:.1%} "
            f"(real tokens / capacity){overlong}")
