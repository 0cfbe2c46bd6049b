"""examples/demo.sh, the script behind `make demo`: the same pipeline (tokenizer, preprocessing, TP2 on 2
CPU processes), shortened to 60 iterations. It must print where the logs and the checkpoint are and a final
validation loss clearly below the untrained model's."""

import re
import subprocess
import sys

import launch
from launch import REPO, free_port


def test_demo_trains_and_reports(tmp_path):
    out = tmp_path / "demo_out"
    proc = subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], cwd=REPO,
                          env={**launch.subprocess_env(), "PYTHON": sys.executable, "OUT": str(out), "ITERS": "60",
                               "PORT": str(free_port())},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    text = proc.stdout
    assert "layout TP2 x PP1 x DP1 on cpu (gloo)" in text
    start = float(re.search(r" validation loss at iteration 0 \| lm loss value: (\S+) \|", text)[1])
    final = float(re.search(r" final validation loss at iteration 60 \| lm loss value: (\S+) \|", text)[1])
    assert start > 8.0  # about ln(4096): the untrained model
    assert final < start - 1.0, (start, final)
    tensorboard = re.search(r" > TensorBoard logs: (\S+)", text)[1]
    checkpoint = re.search(r" > checkpoint: (\S+)", text)[1]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert tensorboard == str(out / "tensorboard") and checkpoint == str(out / "checkpoints")
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "60"
