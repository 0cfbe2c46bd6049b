"""Preference data for training: whole pairs packed into --seq-length rows, so a pair's chosen and rejected
sequences are always in the same row, hence the same micro-batch, pipeline pass and data-parallel rank.

A --data-path prefix written by tools/preprocess_preference.py (PREFIX.bin/.idx with PREFIX_loss_mask, and
PREFIX.json saying "kind": "preference") holds each pair as two consecutive sequences. Pairs are the
packing units of the SFT machinery (data/sft_dataset.py: per-epoch shuffles from --seed, --split, blends,
--sft-packing pack|pad): a pair fills (len(chosen) - 1) + (len(rejected) - 1) positions, and a pair longer
than a row is left out (never cut: preprocessing already fitted pairs to its --seq-length).

Each row carries, besides the SFT keys (tokens, labels, loss_mask, position_ids, real_tokens):
  ``pair_ids``  [seq_length // 2] int64: the global id of the row's k-th pair, -1 past the last pair;
  ``ref_logps`` [seq_length // 2, 2] float64: the reference model's (chosen, rejected) log-probability sums
                of those pairs (preference/reference.py), NaN until the reference pass has filled the table.
The row's segments are found from position_ids (a restart at 0 starts one): segments 2k and 2k + 1 are pair
k's chosen and rejected sequences, and a trailing padding segment, if any, follows the last pair.
"""

from __future__ import annotations

import os

import numpy as np

from megatron_ext.data.packing import DROP, build_row
from megatron_ext.data.sft_dataset import MASK_SUFFIX, PackedSource, SFTDataset, _indexed, sidecar, split_range


def is_preference_prefix(prefix: str) -> bool:
    return os.path.isfile(prefix + MASK_SUFFIX + ".idx") and sidecar(prefix).get("kind") == "preference"


def max_pairs_per_row(seq_length: int) -> int:
    """A pair fills at least two positions (two sequences of at least two tokens)."""
    return max(1, seq_length // 2)


class PreferenceSource:
    """Units are pairs; `lengths` are given as positions + 1 so that data/packing.py, which counts a unit of
    n tokens as n - 1 positions, packs whole pairs."""

    kind = "preference pairs"

    def __init__(self, prefix: str, vocab_size: int | None = None):
        self.prefix = prefix
        self.tokens, self.masks = _indexed(prefix), _indexed(prefix + MASK_SUFFIX)
        seq_lengths = np.asarray(self.tokens.sequence_lengths, dtype=np.int64)
        if not np.array_equal(seq_lengths, np.asarray(self.masks.sequence_lengths)):
            raise ValueError(f"{prefix}: the token and loss-mask files disagree on sequence lengths (written by "
                             "different runs?); write both again with tools/preprocess_preference.py")
        if len(seq_lengths) % 2:
            raise ValueError(f"{prefix}: {len(seq_lengths)} sequences, an odd number: preference data holds pairs "
                             "(prompt + chosen, prompt + rejected); write it with tools/preprocess_preference.py")
        self.info = sidecar(prefix)
        if self.info.get("kind") != "preference":
            raise ValueError(f"{prefix}: not preference data ({prefix}.json says kind "
                             f"{self.info.get('kind')!r}); write it with tools/preprocess_preference.py")
        recorded = self.info.get("vocab_size")
        if vocab_size is not None and recorded is not None and recorded > vocab_size:
            raise ValueError(f"{prefix} was tokenised with a {recorded}-id vocabulary (special tokens "
                             f"{self.info.get('special_tokens')}) but this run's tokenizer has {vocab_size}: pass "
                             "the same tokenizer flags as tools/preprocess_preference.py did")
        self.sequence_lengths = seq_lengths
        self.lengths = seq_lengths[0::2] + seq_lengths[1::2] - 1   # positions + 1

    def __len__(self):
        return len(self.lengths)

    def sequence(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.tokens[index], dtype=np.int64), np.asarray(self.masks[index], dtype=np.float32))

    def pair(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.sequence(2 * index), self.sequence(2 * index + 1)]

    def unit(self, index: int):  # data/sft_dataset.py's interface: never a single unit of a pair
        raise TypeError("preference pairs are built by PreferenceDataset, two sequences at a time")


class PreferenceDataset(SFTDataset):
    """Rows of whole pairs (the map-style dataset the loader reads), with their reference log-probs."""

    def __init__(self, packed, weights, num_samples, seq_length, pad_id):
        super().__init__(packed, weights, num_samples, seq_length, pad_id)
        self.offsets = np.cumsum([0] + [len(p.source) for p in packed])  # global pair id = offset + index
        self.reference = np.full((int(self.offsets[-1]), 2), np.nan)     # filled by preference/reference.py

    @property
    def num_pairs(self) -> int:
        return int(self.offsets[-1])

    def rows_for_pairs(self) -> list[tuple[int, np.ndarray]]:
        """(source, pair indices) of every row of the first epoch of each source: the rows of a reference
        pass, which together hold every pair of the split exactly once."""
        return [(s, row) for s, p in enumerate(self.packed) for row in p.epoch_rows(0)]

    def build(self, source: int, pairs: np.ndarray) -> dict:
        packed = self.packed[source]
        units = [seq for p in pairs for seq in packed.source.pair(int(p))]
        sample = build_row(units, self.seq_length, self.pad_id)
        ids = np.full(max_pairs_per_row(self.seq_length), -1, dtype=np.int64)
        ids[:len(pairs)] = self.offsets[source] + np.asarray(pairs, dtype=np.int64)
        sample["pair_ids"] = ids
        ref = np.full((len(ids), 2), np.nan)
        ref[:len(pairs)] = self.reference[ids[:len(pairs)]]
        sample["ref_logps"] = ref
        sample["dataset_id"] = np.int64(packed.index)
        return sample

    def __getitem__(self, index: int) -> dict:
        source = int(self.sources[index])
        return self.build(source, self.packed[source].row(int(self.rows[index])))


def has_preference_data(data_path) -> bool:
    from megatron.core.datasets.utils import get_blend_from_list

    if not data_path:
        return False
    prefixes, _ = get_blend_from_list(list(data_path))
    return any(is_preference_prefix(p) for p in prefixes)


def preference_sources(data, training, part: int, vocab_size: int | None = None) -> tuple[list, list]:
    """(PackedSource per preference prefix, blend weights) of split `part`."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = get_blend_from_list(list(data.data_path))
    others = [p for p in prefixes if not is_preference_prefix(p)]
    if others:
        raise SystemExit(f"error: --dpo trains on preference data only; {others[0]} is not (write pairs with "
                         "tools/preprocess_preference.py, whose PREFIX_preference.json says kind 'preference')")
    packed = []
    for index, prefix in enumerate(prefixes):
        source = PreferenceSource(prefix, vocab_size)
        packed.append(PackedSource(source, split_range(len(source), data.split, part), training.seq_length,
                                   training.seed + part, index, getattr(data, "sft_packing", "pack"), DROP))
    packed = [(p, w) for p, w in zip(packed, weights or [None] * len(packed)) if p.rows_per_epoch()]
    if not packed:
        return [], []
    return [p for p, _ in packed], [w if w is not None else p.rows_per_epoch() for p, w in packed]


def build_preference_datasets(data, training, train_samples: int, valid_samples: int, pad_id: int,
                              vocab_size: int):
    """(train, validation or None) PreferenceDatasets and a start-up summary."""
    datasets, lines = [], []
    for part, count in ((0, train_samples), (1, valid_samples)):
        packed, weights = preference_sources(data, training, part, vocab_size) if count else ([], [])
        datasets.append(PreferenceDataset(packed, weights, count, training.seq_length, pad_id) if packed else None)
        if part == 0:
            if not packed:
                raise SystemExit(f"error: --data-path has no training pairs for --split {data.split} that fit "
                                 f"--seq-length {training.seq_length}")
            for p, w in zip(packed, weights):
                st = p.first_epoch_stats
                lines.append(f" > preference pairs {p.source.prefix}: share {w / sum(weights):.3f}, {st.units} "
                             f"pairs in {st.rows} rows per epoch, packing efficiency {st.efficiency:.1%}"
                             + (f", {st.dropped} pairs dropped as longer than a row" if st.dropped else ""))
    return datasets[0], datasets[1], "\n".join(lines)


def epoch_samples(data, training, epochs: int) -> int:
    packed, _ = preference_sources(data, training, 0)
    return sum(p.rows_in_epochs(epochs) for p in packed)
