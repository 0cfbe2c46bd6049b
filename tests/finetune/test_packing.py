"""Packing (data/packing.py, training/step.py packed_seq_params, layers/attention.py's packed path): rows,
positions, segment boundaries, and through the real model: packed = padded = alone."""

import json
import subprocess

import numpy as np
import pytest
import torch
from launch import REPO, subprocess_env, torchrun_cmd

from megatron_ext.data.packing import DROP, PACK, PAD, TRUNCATE, PackingStats, build_row, plan_rows


def test_first_fit_fills_rows_and_counts_efficiency():
    lengths = np.array([9, 5, 9, 3, 7, 2, 1])  # positions 8, 4, 8, 2, 6, 1; the 1-token unit trains nothing
    stats = PackingStats()
    rows = plan_rows(np.arange(7), lengths, 10, PACK, TRUNCATE, stats)
    used = [sum(int(lengths[u]) - 1 for u in row) for row in rows]
    assert all(u <= 10 for u in used)
    assert sorted(int(u) for row in rows for u in row) == [0, 1, 2, 3, 4, 5]
    assert rows[0].tolist() == [0, 3] and rows[1].tolist() == [1, 4]  # first fit: 2 goes back into row 0's gap
    assert stats.dropped == 1 and stats.units == 6 and stats.rows == len(rows) == 3
    assert stats.real_positions == 29 and stats.efficiency == pytest.approx(29 / 30)


def test_padding_mode_and_overlong_units():
    lengths = np.array([4, 30, 6])
    stats = PackingStats()
    rows = plan_rows(np.arange(3), lengths, 8, PAD, TRUNCATE, stats)
    assert [r.tolist() for r in rows] == [[0], [1], [2]] and stats.truncated == 1
    stats = PackingStats()
    rows = plan_rows(np.arange(3), lengths, 8, PACK, DROP, stats)
    assert [r.tolist() for r in rows] == [[0, 2]] and stats.dropped == 1 and stats.dropped_ids == [1]


def test_row_restarts_positions_and_never_trains_across_units_or_padding():
    a = (np.array([5, 6, 7, 8]), np.array([0, 0, 1, 1], np.float32))
    b = (np.array([9, 10, 11]), np.array([0, 1, 1], np.float32))
    row = build_row([a, b], 8, pad_id=0)
    assert row["tokens"].tolist() == [5, 6, 7, 9, 10, 0, 0, 0]
    assert row["labels"].tolist()[:5] == [6, 7, 8, 10, 11]  # b's first input predicts b's token, not a's
    assert row["loss_mask"].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert row["real_tokens"].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_segment_boundaries_from_position_ids():
    from megatron_ext.training.step import packed_seq_params

    assert packed_seq_params(torch.arange(6).repeat(2, 1)) is None  # pretraining rows: plain causal attention
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    params = packed_seq_params(positions)
    assert params.cu_seqlens_q.tolist() == [0, 3, 5, 6, 12] and params.max_seqlen_q == 6


@pytest.fixture(scope="module")
def model_measurements(tmp_path_factory):
    out = tmp_path_factory.mktemp("packing") / "result.json"
    args = ["--model-preset", "tiny", "--mock-data", "--vocab-size", "256", "--device", "cpu", "--seq-length", "48",
            "--micro-batch-size", "1", "--train-iters", "1"]
    cmd = torchrun_cmd(1, str(REPO / "tests" / "finetune" / "packing_worker.py")) + [str(out), "48"] + args
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_packed_and_padded_give_the_same_loss_and_gradients(model_measurements):
    fp32, bf16 = model_measurements["fp32"], model_measurements["bf16"]
    assert fp32["rows"][0] < fp32["rows"][1]
    assert fp32["loss"]["packed"] == pytest.approx(fp32["loss"]["padded"], rel=1e-6)
    assert fp32["grads"] < 1e-6
    assert bf16["grads"] < 2e-2
    # bf16 computes both in bf16 (fp32 softmax/loss): equal to bf16's resolution.
    assert bf16["loss"]["packed"] == pytest.approx(bf16["loss"]["padded"], rel=2e-2)
    assert bf16["loss"]["packed"] == pytest.approx(fp32["loss"]["packed"], rel=2e-2)


def test_a_packed_conversation_computes_what_it_computes_alone(model_measurements):
    assert model_measurements["fp32"]["alone"] < 1e-5
    assert model_measurements["bf16"]["alone"] < 3e-2
