"""examples/mup_transfer.sh and tools/mup_transfer_report.py: the sweep runs end to end, and the report
finds the best learning rate per width (grid point and parabola vertex) and how far it moved."""

import importlib.util
import json
import math
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


def _write_run(runs, param, width, lr, loss):
    lines = [{"iteration": 10, "lm loss": 9.0}]
    if loss is not None:
        lines.append({"iteration": 20, "final validation lm loss": loss})
    (runs / f"{param}_w{width}_lr{lr}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


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


def test_sweep_script_runs_end_to_end(tmp_path):
    """The real sweep on the bundled corpus, shrunk to 2 widths x 2 LRs x 3 steps (about a minute)."""
    out = tmp_path / "sweep"
    env = {**launch_env(), "PYTHON": sys.executable, "OUT": str(out), "WIDTHS": "32 64", "BASE": "32", "LRS": "5e-3 1e-2", "ITERS": "3", "WARMUP": "1",
           "GBS": "4", "SEQ": "32", "VOCAB": "490", "LAYERS": "1"}
    proc = subprocess.run(["bash", str(REPO / "examples" / "mup_transfer.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "transfer.json").read_text())
    for param in ("sp", "mup"):
        for width in ("32", "64"):
            losses = saved["losses"][param][width]
            assert len(losses) == 2 and all(v is not None and 3.0 < v < 7.0 for v in losses.values()), saved
    # At the base width μP is SP (reused run); at 2x width the two differ.
    assert saved["losses"]["mup"]["32"] == saved["losses"]["sp"]["32"]
    assert saved["losses"]["mup"]["64"] != saved["losses"]["sp"]["64"]
