"""Pairs packed into rows: both sequences of a pair in one row, every pair once per epoch, and the per-pair
log-prob sums the DPO step takes from a packed row equal each sequence scored alone."""

from types import SimpleNamespace

import numpy as np
import torch

from megatron_ext.preference.dataset import build_preference_datasets, max_pairs_per_row
from megatron_ext.preference.loss import per_token_logps
from megatron_ext.preference.step import pair_logps
from prefdata import copy_task, write_pairs

SEQ = 24


def datasets(tmp_path, packing="pack", n_pairs=40, samples=30):
    pairs = copy_task(n_pairs, seed=5)
    pairs.append(([1] * 12, [20] * 3, [21] * 4))   # 12 + 3 - 1 + 12 + 4 - 1 = 29 positions: longer than a row
    prefix = write_pairs(str(tmp_path / "d"), pairs, vocab_size=33, seq_length=SEQ)
    data = SimpleNamespace(data_path=[prefix], split="100,0,0", sft_packing=packing)
    training = SimpleNamespace(seq_length=SEQ, seed=11)
    train, valid, summary = build_preference_datasets(data, training, samples, 0, pad_id=32, vocab_size=33)
    return pairs, train, valid, summary


def test_rows_hold_whole_pairs_once_per_epoch(tmp_path):
    pairs, train, valid, summary = datasets(tmp_path)
    assert valid is None and "1 pairs dropped as longer than a row" in summary
    seen = []
    for source, row in train.rows_for_pairs():
        sample = train.build(source, row)
        ids = sample["pair_ids"][sample["pair_ids"] >= 0]
        seen += ids.tolist()
        starts = np.flatnonzero(sample["position_ids"] == 0)
        # segments: 2 per pair (+ the padding), in pair order: chosen's tokens then rejected's
        assert len(starts) in (2 * len(ids), 2 * len(ids) + 1)
        for k, pid in enumerate(ids):
            prompt, chosen, rejected = pairs[pid]
            for j, reply in enumerate((chosen, rejected)):
                seq = prompt + reply
                a = starts[2 * k + j]
                assert sample["tokens"][a:a + len(seq) - 1].tolist() == seq[:-1]
                assert sample["labels"][a:a + len(seq) - 1].tolist() == seq[1:]
                assert sample["loss_mask"][a:a + len(seq) - 1].tolist() == [0.0] * (len(prompt) - 1) + [1.0] * len(reply)
    assert sorted(seen) == list(range(len(pairs) - 1))   # all but the overlong one, each once
    assert train[0]["pair_ids"].shape == (max_pairs_per_row(SEQ),)
    assert np.isnan(train[0]["ref_logps"][train[0]["pair_ids"] >= 0]).all()  # until the reference pass


def test_packed_pair_sums_equal_each_sequence_alone(tmp_path):
    pairs, train, _, _ = datasets(tmp_path)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(33, 33, generator=g, dtype=torch.float64)
    rows = [train[i] for i in range(4)]
    batch = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}
    logps = per_token_logps(table[batch["tokens"]], batch["labels"])
    sums, counts = pair_logps(logps, batch["loss_mask"], batch["position_ids"], batch["pair_ids"].shape[1])
    checked = 0
    for b in range(len(rows)):
        for k, pid in enumerate(batch["pair_ids"][b].tolist()):
            if pid < 0:
                assert sums[b, k].abs().sum() == 0 and counts[b, k].sum() == 0
                continue
            prompt, chosen, rejected = pairs[pid]
            for j, reply in enumerate((chosen, rejected)):
                seq = torch.tensor(prompt + reply)
                alone = per_token_logps(table[seq[:-1]], seq[1:])[len(prompt) - 1:].sum()
                torch.testing.assert_close(sums[b, k, j], alone, rtol=0, atol=1e-12)
                assert counts[b, k, j] == len(reply)
                checked += 1
    assert checked >= 8


def test_padding_mode_puts_one_pair_per_row(tmp_path):
    _, train, _, _ = datasets(tmp_path, packing="pad")
    assert all(len(row) == 1 for _, row in train.rows_for_pairs())


def test_stored_reference_is_refused_for_other_data(tmp_path):
    """The reference log-probs are the starting weights' on these pairs: a file for other pairs (another
    split or another source) stops the run instead of training against the wrong reference."""
    import pytest

    from megatron_ext.preference.reference import load_reference, save_reference

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, train, _, _ = datasets(tmp_path / "a")
    table = np.arange(train.num_pairs * 2, dtype=np.float64).reshape(-1, 2)
    save_reference(str(tmp_path / "ckpt"), {"train": table}, {"train": train})
    assert np.array_equal(load_reference(str(tmp_path / "ckpt"), {"train": train})["train"], table)
    assert load_reference(str(tmp_path / "empty"), {"train": train}) is None
    _, other, _, _ = datasets(tmp_path / "b", n_pairs=41)
    with pytest.raises(SystemExit, match="reference log-probs for other data"):
        load_reference(str(tmp_path / "ckpt"), {"train": other})
