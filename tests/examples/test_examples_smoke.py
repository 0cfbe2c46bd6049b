"""The example recipes, run end to end on CPU with SMOKE=1: each must finish, save, resume from its own
checkpoint in a second training run (iterations continue 4, 5, 6 after 1, 2, 3) and export a Hugging Face
directory. Same scripts as the real runs; SMOKE only changes the defaults of their variables."""

import json
import os
import re
import subprocess
import sys

import pytest
import launch
from launch import REPO, free_port

EXAMPLES = {
    # script: (expected HF model_type, expected vocabulary of the export)
    "crystal_phase2.sh": ("crystalcoder", 512),
    # the smoke tokenizer's 490 pieces (the padding rows to 512 are dropped on export)
    "amber_7b.sh": ("llama", 490),
    "openllama_3b.sh": ("llama", 490),
    # a 384-token GPT-NeoX-style BPE padded to 512 rows (--vocab-pad-to), as DCLM-1B pads GPT-NeoX's 50277 to 50432
    "dclm_1b.sh": ("openlm", 512),
}
ITERATION = re.compile(r"^\s*iteration\s+(\d+)/\s*(\d+)\s*\|", re.M)


def run_example(script: str, work, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(REPO / "examples" / script)], cwd=REPO,
                          env={**launch.subprocess_env(), "SMOKE": "1", "PYTHON": sys.executable, "WORK": str(work),
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
    # Trained on the bundled corpus (tokenizer trained on it, both parts preprocessed), not mock data.
    assert "--mock-data" not in out
    assert (hf / ("tokenizer.json" if script == "dclm_1b.sh" else "tokenizer.model")).is_file()
    for part in ("english", "code"):
        assert (work / "data" / f"{part}_text_document.bin").stat().st_size > 100_000
    if script == "crystal_phase2.sh":
        # The phase-1 stand-in was converted once and the μP values came from it.
        assert (work / "converted" / "latest_checkpointed_iteration.txt").is_file()
        assert config["mup_embeddings_scale"] == pytest.approx(14.6)
        assert "--data-mix" in out and "fim_rate" in (work / "smoke_mix.json").read_text()
        # FIM on the code source only, at phase 2's rates, as the run reports at start-up.
        assert "code: weight 0.6280, FIM rate 0.9 (SPM 0.5, char split)" in out, out[-3000:]
        assert re.search(r"english: weight 0\.3720\n", out)
    elif script == "amber_7b.sh":  # Amber's mix is given in tokens; so is its smoke stand-in
        assert "--data-mix" in out
        assert all("tokens" in source for source in json.loads((work / "smoke_mix.json").read_text())["sources"])
    elif script == "dclm_1b.sh":
        check_dclm_smoke(work, hf, config, out)
    else:  # OpenLLaMA's recipe takes Megatron's --data-path weights
        assert re.search(r"--data-path 0\.5 \S+/english_text_document 0\.5 \S+/code_text_document", out), out[-3000:]
    # Training moved the loss on real text (validation at iteration 0 is the untrained model's).
    valid = [float(v) for v in re.findall(r"validation loss at iteration \d+ \| lm loss value: (\S+) \|", out)]
    assert valid and all(4.0 < v < 8.0 for v in valid), valid


def check_dclm_smoke(work, hf, config, out):
    """DCLM-1B: open_lm layout in and out, the GPT-NeoX-style tokenizer through the whole pipeline."""
    from safetensors import safe_open

    # The tiny open_lm-layout stand-in was converted once; the run used the tokenizer the converter copied.
    assert (work / "converted" / "latest_checkpointed_iteration.txt").is_file()
    assert (work / "hf_dclm" / "tokenizer.json").is_file() and (work / "converted" / "tokenizer" / "tokenizer.json").is_file()
    assert f"--tokenizer-type HuggingFaceTokenizer --tokenizer-model {work}/converted/tokenizer" in out, out[-3000:]
    assert "--vocab-pad-to 512" in out and "--data-mix" in out
    assert "layout TP2 x PP1 x DP1 on cpu (gloo)" in out and "--sequence-parallel" in out
    # The export is open_lm's layout as TRI-ML/DCLM-1B publishes it, with the tokenizer byte for byte.
    trained = (work / "tokenizer" / "tokenizer.json").read_bytes()
    assert (hf / "tokenizer.json").read_bytes() == trained
    vocab = json.loads(trained)
    assert len(vocab["model"]["vocab"]) == 384 and vocab["added_tokens"][0]["content"] == "<|endoftext|>"
    assert (config["norm_type"], config["apply_qk_norm"], config["weight_tying"]) == ("gain_only_lp_layer_norm", True, False)
    assert (config["dim"], config["n_layers"], config["n_heads"], config["seq_len"]) == (64, 4, 4, 64)
    names = set()
    for file in hf.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names |= set(f.keys())
            if "model.layers.0.attention.pos_embed.inv_freq" in f.keys():
                assert str(f.get_tensor("model.layers.0.attention.pos_embed.inv_freq").dtype) == "torch.float32"
    layer = {f"model.layers.{i}.{n}" for i in range(4) for n in (
        "attention.in_proj.weight", "attention.out_proj.weight", "attention.q_norm.weight", "attention.k_norm.weight",
        "attention.pos_embed.inv_freq", "feed_forward.w12.weight", "feed_forward.w3.weight",
        "attention_norm.weight", "ffn_norm.weight")}
    assert names == layer | {"model.tok_embeddings.weight", "model.norm.weight", "model.output.weight"}, sorted(names)


def test_slurm_batch_file_passes_the_rendezvous_to_the_recipe(tmp_path):
    """The sbatch file under stand-ins for srun and scontrol (node 1 of a 2-node job): the recipe it
    starts sees Slurm's node count, its own node rank and node 0 as the rendezvous host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: drop its options, run the command as the task of node 1. scontrol: the job's two hosts.
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'SLURM_NODEID=1 exec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\nprintf "gpu-a17\\ngpu-a18\\n"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {**launch.subprocess_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]", "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "examples" / "slurm_multinode.sbatch"), "examples/crystal_phase2.sh",
                           "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    values = dict(re.findall(r"^  (\w+) .*\n\s+= (.*)$", proc.stdout, re.M))
    assert (values["NNODES"], values["NODE_RANK"], values["MASTER_ADDR"]) == ("2", "1", "gpu-a17"), values
    assert values["MASTER_PORT"] == str(20000 + 4242 % 20000)


def test_example_help_lists_variables():
    for script in EXAMPLES:
        proc = subprocess.run(["bash", str(REPO / "examples" / script), "--help"], cwd=REPO,
                              env={**launch.subprocess_env(), "PYTHON": sys.executable}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout
        for var in ("WORK", "SAVE_DIR", "TP", "PP", "GLOBAL_BATCH", "LR", "NNODES", "MASTER_ADDR", "EXPORT_DIR"):
            assert f"\n  {var} " in proc.stdout, (script, var)
    crystal = subprocess.run(["bash", str(REPO / "examples" / "crystal_phase2.sh"), "--help"], cwd=REPO,
                             env={**launch.subprocess_env(), "PYTHON": sys.executable}, stdout=subprocess.PIPE, text=True).stdout
    for value in ("0.0087825", "1.3679e-4", "2048", "data/mixes/crystal_phase2.json"):
        assert value in crystal, value
    dclm = subprocess.run(["bash", str(REPO / "examples" / "dclm_1b.sh"), "--help"], cwd=REPO,
                          env={**launch.subprocess_env(), "PYTHON": sys.executable}, stdout=subprocess.PIPE, text=True).stdout
    # the continued-pretraining schedule is documented as a choice, and the DCLM-1B vocabulary padding is kept
    for value in ("CHOICE, not DCLM's numbers", "= 3e-4", "= 50432", "= HuggingFaceTokenizer", "converted/tokenizer"):
        assert value in dclm, value


def test_dclm_recipe_requires_data(tmp_path):
    """Without SMOKE there is no default mix: the recipe says what to set before creating anything."""
    proc = subprocess.run(["bash", str(REPO / "examples" / "dclm_1b.sh")], cwd=REPO,
                          env={**launch.subprocess_env(), "PYTHON": sys.executable, "WORK": str(tmp_path / "w")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "set DATA_MIX" in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "w").exists()
