"""Which conversations share a training row: the packing plan, and the row built from it.

A unit (one conversation, or one piece of a plain-text document) of n tokens fills n - 1 positions of a
row: its inputs are tokens[:-1], its labels tokens[1:]. Packing puts the units of a (shuffled) order into
rows first-fit (plan_rows); padding mode gives every unit its own row. Either way the rest of
the row is padding: its own segment, never trained. Position ids restart at 0 at each segment, which is how
the model finds the segments (training/step.py): attention never crosses one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PACK, PAD = "pack", "pad"
TRUNCATE, DROP = "truncate", "drop"


@dataclass
class PackingStats:
    rows: int = 0
    units: int = 0
    real_positions: int = 0      # positions holding a unit's token (the rest is padding)
    capacity: int = 0            # rows x seq_length
    truncated: int = 0           # units cut to seq_length + 1 tokens
    dropped: int = 0             # units left out (longer than a row, with --sft-overlong drop; or under 2 tokens)
    dropped_ids: list = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        """Real tokens / capacity: the share of the computed positions that are not padding."""
        return self.real_positions / self.capacity if self.capacity else 0.0


def fit_lengths(lengths: np.ndarray, seq_length: int, overlong: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions each unit fills, keep mask): a unit longer than seq_length + 1 tokens is cut to that
    (truncate) or left out (drop); a unit of fewer than 2 tokens trains nothing and is left out."""
    positions = lengths.astype(np.int64) - 1
    too_long = positions > seq_length
    keep = positions >= 1
    if overlong == DROP:
        keep &= ~too_long
    elif overlong != TRUNCATE:
        raise ValueError(f"overlong must be {TRUNCATE!r} or {DROP!r}, not {overlong!r}")
    return np.minimum(positions, seq_length), keep


OPEN_ROWS = 64  # rows still accepting units: enough for first fit to fill gaps, small enough to stay O(n)


def plan_rows(order: np.ndarray, lengths: np.ndarray, seq_length: int, mode: str, overlong: str,
              stats: PackingStats | None = None) -> list[np.ndarray]:
    """Rows (arrays of unit indices) over `order`, the units in the sequence they are read. Packing is first
    fit over the last OPEN_ROWS rows (a unit goes to the oldest open row it fits in), which fills rows far
    better than closing a row at the first unit that does not fit; a row leaves the window when full or
    when the window is full. Deterministic: the same order gives the same rows."""
    positions, keep = fit_lengths(lengths, seq_length, overlong)
    rows: list[np.ndarray] = []
    open_rows: list[list] = []   # [units, positions used]
    for unit in order:
        unit = int(unit)
        if not keep[unit]:
            if stats is not None:
                stats.dropped += 1
                stats.dropped_ids.append(unit)
            continue
        n = int(positions[unit])
        if stats is not None:
            stats.units += 1
            stats.real_positions += n
            stats.truncated += int(lengths[unit] - 1 > seq_length)
        if mode == PAD:
            rows.append(np.asarray([unit], dtype=np.int64))
            continue
        target = next((row for row in open_rows if row[1] + n <= seq_length), None)
        if target is None:
            target = [[], 0]
            open_rows.append(target)
        target[0].append(unit)
        target[1] += n
        if target[1] == seq_length or len(open_rows) > OPEN_ROWS:
            done = target if target[1] == seq_length else open_rows[0]
            open_rows.remove(done)
            rows.append(np.asarray(done[0], dtype=np.int64))
    rows.extend(np.asarray(row[0], dtype=np.int64) for row in open_rows)
    if stats is not None:
        stats.rows += len(rows)
        stats.capacity += len(rows) * seq_length
    return rows


def build_row(units: list[tuple[np.ndarray, np.ndarray]], seq_length: int, pad_id: int) -> dict:
    """The training sample of one row: units are (token ids, loss mask) pairs, mask[i] = 1 when token i is
    trained (predicted from the tokens before it)."""
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.zeros(seq_length, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    real = np.zeros(seq_length, dtype=np.float32)
    start = 0
    for ids, mask in units:
        n = min(len(ids) - 1, seq_length - start)
        end = start + n
        tokens[start:end] = ids[:n]
        labels[start:end] = ids[1:n + 1]
        loss_mask[start:end] = mask[1:n + 1]
        position_ids[start:end] = np.arange(n)
        real[start:end] = 1.0
        start = end
    position_ids[start:] = np.arange(seq_length - start)  # the padding: one more segment, never trained
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
            "real_tokens": real}
