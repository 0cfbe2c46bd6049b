"""The example recipes, run end to end on CPU with SMOKE=1: each must finish, save, resume from its own
checkpoint in a second training run (iterations continue 4, 5, 6 after 1, 2, 3) and export a Hugging Face
directory. Same scripts as the real runs; SMOKE only changes the defaults of their variables."""

import json
import re
import subprocess
import sys

import pytest
import launch
from launch import REPO, free_port

EXAMPLES = {
    # script: (expected HF model_type, expected vocabulary of the export)
    "crystal_phase2.sh": ("crystalcoder", 512),
    "amber_7b.sh": ("llama", 512),
    "openllama_3b.sh": ("llama", 512),
}
ITERATION = re.compile(r"^\s*iteration\s+(\d+)/\s*(\d+)\s*\|", re.M)


def run_example(script: str, work, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(REPO / "examples" / script)], cwd=REPO,
                          env={**launch.test_env(), "SMOKE": "1", "PYTHON": sys.executable, "WORK": str(work),
                               "MASTER_PORT": str(free_port()), **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_smoke(script, tmp_path):
    work = tmp_path / "work"
    out = run_example(script, work).stdout

    # Two training runs: the first stops at 3 and saves, the second loads it and continues at 4.
    assert "training to iteration 3 from" in out, out[-3000:]
    assert re.search(r"training to iteration 6 from \S*checkpoints \(latest: 3\)", out), out[-3000:]
    iterations = [int(m.group(1)) for m in ITERATION.finditer(out)]
    assert iterations == [1, 2, 3, 4, 5, 6], iterations
    assert (work / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "6"

    hf = work / "hf_phase2" if script == "crystal_phase2.sh" else work / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert list(hf.glob("*.safetensors")), sorted(p.name for p in hf.iterdir())
    model_type, vocab = EXAMPLES[script]
    assert config["model_type"] == model_type
    assert config["vocab_size"] == vocab
    if script == "crystal_phase2.sh":
        # The phase-1 stand-in was converted once and the μP values came from it.
        assert (work / "converted" / "latest_checkpointed_iteration.txt").is_file()
        assert config["mup_embeddings_scale"] == pytest.approx(14.6)
        assert (hf / "tokenizer.model").is_file()


def test_example_help_lists_variables():
    for script in EXAMPLES:
        proc = subprocess.run(["bash", str(REPO / "examples" / script), "--help"], cwd=REPO,
                              env={**launch.test_env(), "PYTHON": sys.executable}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout
        for var in ("WORK", "SAVE_DIR", "TP", "PP", "GLOBAL_BATCH", "LR", "NNODES", "MASTER_ADDR", "EXPORT_DIR"):
            assert f"\n  {var} " in proc.stdout, (script, var)
    crystal = subprocess.run(["bash", str(REPO / "examples" / "crystal_phase2.sh"), "--help"], cwd=REPO,
                             env={**launch.test_env(), "PYTHON": sys.executable}, stdout=subprocess.PIPE, text=True).stdout
    for value in ("0.0087825", "1.3679e-4", "2048", "data/mixes/crystal_phase2.json"):
        assert value in crystal, value
