"""examples/mup_transfer.sh and tools/mup_transfer_report.py: the sweep runs end to end, and the report
finds the best learning rate per width (grid point and parabola vertex) and how far it moved."""

import importlib.util
import json
import math
import statistics
import subprocess
import sys

import pytest
from launch import REPO
from launch import subprocess_env as launch_env


def _report_module():
    spec = importlib.util.spec_from_file_location("mup_transfer_report", REPO / "tools" / "mup_transfer_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(runs, param, width, lr, loss, seed=None):
    lines = [{"iteration": 10, "lm loss": 9.0}]
    if loss is not None:
        lines.append({"iteration": 20, "final validation lm loss": loss})
    suffix = "" if seed is None else f"_s{seed}"
    (runs / f"{param}_w{width}_lr{lr}{suffix}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_best_lr_shift_and_divergence(tmp_path):
    """Synthetic losses: a parabola in log2(LR) whose vertex moves down one octave per doubling of
    width under SP and stays under μP; a NaN run and an unfinished run count as diverged."""
    report = _report_module()
    runs = tmp_path / "runs"
    runs.mkdir()
    lrs = ["1.25e-3", "2.5e-3", "5e-3", "1e-2", "2e-2"]
    for i, width in enumerate((64, 128, 256)):
        for lr in lrs:
            x = math.log2(float(lr))
            _write_run(runs, "mup", width, lr, 3.0 + 0.1 * (x - math.log2(6e-3)) ** 2)
            _write_run(runs, "sp", width, lr, 3.0 + 0.1 * (x - math.log2(6e-3) + i) ** 2)
    _write_run(runs, "sp", 256, "2e-2", float("nan"))
    _write_run(runs, "sp", 256, "1e-2", None)
    summary = report.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--base-width", "64"])
    best = summary["best"]
    for width in (64, 128, 256):
        assert best["mup"][width]["grid"] == 5e-3
        assert best["mup"][width]["interpolated"] == pytest.approx(6e-3, rel=1e-6)  # exact for a parabola
    assert [best["sp"][w]["grid"] for w in (64, 128, 256)] == [5e-3, 2.5e-3, 1.25e-3]
    assert best["sp"][256]["interpolated"] is None  # best at the grid's edge: the optimum may lie outside
    assert summary["shift"]["mup"]["octaves"] == pytest.approx(0.0, abs=1e-9)
    assert summary["shift"]["sp"]["grid_octaves"] == pytest.approx(-2.0)
    saved = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert saved["losses"]["sp"]["256"][repr(2e-2)] is None and saved["losses"]["sp"]["256"][repr(1e-2)] is None
    text = (tmp_path / "out" / "transfer.md").read_text()
    assert "diverged" in text and "edge" in text
    assert (tmp_path / "out" / "transfer.png").read_bytes()[:4] == b"\x89PNG"


def test_report_seeds_mean_spread_and_noise(tmp_path):
    """Three seeds: losses are averaged, the best LR is found on the mean and per seed, a width step
    larger than the seed noise is resolved and one inside it is not; one diverged seed makes that LR
    diverged; the table shows mean ± std."""
    report = _report_module()
    runs = tmp_path / "runs"
    runs.mkdir()
    lrs = ["2.5e-3", "5e-3", "1e-2", "2e-2"]
    seed_offset = {1: 0.0, 2: 0.05, 3: -0.03}  # a seed moves every run's loss alike (paired)
    width_level = {32: 4.0, 64: 3.8, 128: 3.79}  # 32 -> 64 is a real gain, 64 -> 128 is noise
    noise = {(64, 1): 0.004, (64, 2): -0.006, (64, 3): 0.0, (128, 1): -0.01, (128, 2): 0.012, (128, 3): 0.0}
    vertex = {1: math.log2(4e-3), 2: math.log2(8e-3), 3: math.log2(6e-3)}  # per-seed optimum
    for seed in (1, 2, 3):
        for width in (32, 64, 128):
            for lr in lrs:
                x = math.log2(float(lr))
                loss = width_level[width] + seed_offset[seed] + noise.get((width, seed), 0.0) \
                    + 0.1 * (x - vertex[seed]) ** 2
                _write_run(runs, "mup", width, lr, loss, seed)
    _write_run(runs, "mup", 128, "2e-2", float("nan"), 2)
    summary = report.main(["--runs", str(runs), "--out", str(tmp_path / "out")])
    assert summary["seeds"] == ["1", "2", "3"]
    assert summary["best"]["mup"][32]["grid"] == 5e-3
    # The mean of three parabolas is a parabola with the mean vertex.
    mean_vertex = 2 ** (sum(vertex.values()) / 3)
    assert summary["best"]["mup"][32]["interpolated"] == pytest.approx(mean_vertex, rel=1e-6)
    assert summary["best"]["mup"][32]["loss"] == pytest.approx(
        4.0 + sum(seed_offset.values()) / 3 + 0.1 * sum((math.log2(5e-3) - v) ** 2 for v in vertex.values()) / 3)
    per_seed = summary["best_per_seed"]["mup"][32]
    assert [per_seed[s]["grid"] for s in ("1", "2", "3")] == [5e-3, 1e-2, 5e-3]
    assert per_seed["2"]["interpolated"] == pytest.approx(8e-3, rel=1e-6)
    steps = {(r["from_width"], r["to_width"]): r for r in summary["width_steps"]["mup"]}
    assert steps[(32, 64)]["resolved"] is True and steps[(32, 64)]["wider_better"] == 3
    assert steps[(32, 64)]["mean"] == pytest.approx(-0.2 + (0.004 - 0.006) / 3)
    assert steps[(64, 128)]["resolved"] is False and steps[(64, 128)]["wider_better"] == 2
    saved = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert saved["losses"]["mup"]["128"][repr(2e-2)] is None  # one seed diverged
    assert saved["losses_per_seed"]["mup"]["128"][repr(2e-2)]["1"] is not None
    expected_std = statistics.stdev(4.0 + seed_offset[s] + 0.1 * (math.log2(5e-3) - vertex[s]) ** 2 for s in (1, 2, 3))
    assert summary["loss_std"]["mup"][32][5e-3] == pytest.approx(expected_std, rel=1e-9)
    text = (tmp_path / "out" / "transfer.md").read_text()
    assert f"± {expected_std:.3f}" in text and "no: within noise" in text and "3/3 seeds" in text
    assert (tmp_path / "out" / "transfer.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_script_runs_end_to_end(tmp_path):
    """The real sweep on the bundled corpus, shrunk to 2 widths x 1 LR x 2 seeds x 3 steps (about a minute)."""
    out = tmp_path / "sweep"
    env = {**launch_env(), "PYTHON": sys.executable, "OUT": str(out), "WIDTHS": "32 64", "BASE": "32", "LRS": "1e-2", "ITERS": "3", "WARMUP": "1",
           "GBS": "4", "SEQ": "32", "VOCAB": "490", "LAYERS": "1", "SEEDS": "1 2"}
    proc = subprocess.run(["bash", str(REPO / "examples" / "mup_transfer.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["seeds"] == ["1", "2"]
    for param in ("sp", "mup"):
        for width in ("32", "64"):
            losses = saved["losses_per_seed"][param][width]
            assert len(losses) == 1 and all(len(by_seed) == 2 for by_seed in losses.values()), saved
            assert all(v is not None and 3.0 < v < 7.0 for by_seed in losses.values() for v in by_seed.values()), saved
    # At the base width μP is SP (reused run); at 2x width the two differ.
    assert saved["losses_per_seed"]["mup"]["32"] == saved["losses_per_seed"]["sp"]["32"]
    assert saved["losses"]["mup"]["64"] != saved["losses"]["sp"]["64"]
    # The seed reaches the run: the seeds' losses differ.
    assert saved["losses_per_seed"]["sp"]["64"][repr(1e-2)]["1"] != saved["losses_per_seed"]["sp"]["64"][repr(1e-2)]["2"]
