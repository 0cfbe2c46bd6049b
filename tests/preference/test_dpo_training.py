"""DPO in the trainer (pretrain_llama.py with preference data): step 0 is the reference (loss log 2, rewards,
margins and accuracies 0), every parallel layout trains like one process, a smoke run learns the preference,
the Hugging Face export prefers the chosen replies, and a resumed run reuses the stored reference.

One module fixture starts all launches together (start-up, not compute, is what costs on two cores): the
single-process smoke run (30 steps, saved) and the TP2, PP2, DP2 (distributed optimizer) and TP2 x PP2
(sequence parallel) runs (3 steps) on the same pairs."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from launch import REPO, read_log, run_pretrain, start_pretrain, wait_all

from prefdata import copy_task, write_pairs

VOCAB = 32
PAIRS = copy_task(96, seed=1, vocab=VOCAB)
ARGS = ["--model-preset", "tiny", "--device", "cpu", "--tokenizer-type", "NullTokenizer", "--vocab-size", VOCAB,
        "--seq-length", 64, "--micro-batch-size", 2, "--global-batch-size", 8, "--lr", "2e-3",
        "--lr-decay-style", "constant", "--log-interval", 1, "--seed", 1234, "--split", "100,0,0"]
SMOKE_ITERS, LAYOUT_ITERS = 30, 3
LAYOUTS = {"tp2": (2, ["--tensor-model-parallel-size", 2]), "pp2": (2, ["--pipeline-model-parallel-size", 2]),
           "dp2": (2, ["--use-distributed-optimizer"]),
           "tp2xpp2-sp": (4, ["--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2,
                              "--sequence-parallel"])}
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    data = ["--data-path", write_pairs(str(d / "toy"), PAIRS, vocab_size=VOCAB + 1)]
    procs = {"single": start_pretrain(ARGS + data + ["--train-iters", SMOKE_ITERS, "--log-json", d / "single.jsonl",
                                                     "--save", d / "ckpt", "--save-interval", 1000,
                                                     "--tensorboard-dir", d / "tb"])}
    for name, (nproc, extra) in LAYOUTS.items():
        procs[name] = start_pretrain(ARGS + data + extra + ["--train-iters", LAYOUT_ITERS,
                                                            "--log-json", d / f"{name}.jsonl"], nproc=nproc)
    outputs = wait_all(procs)
    logs = {name: [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()
                   if '"rewards/chosen"' in line] for name in procs}
    return d, data, outputs, logs


def test_step_zero_policy_is_the_reference(runs):
    _, _, outputs, logs = runs
    first = logs["single"][0]
    assert first["iteration"] == 1
    assert first["lm loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0
    assert first["rewards/margins"] == 0.0 and first["rewards/accuracies"] == 0.0
    assert first["logps/chosen"] < -1 and first["logps/rejected"] < -1  # real sums, not zeros
    assert "DPO reference log-probs of 96 pairs saved to" in outputs["single"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_trains_like_one_process(runs, layout):
    _, _, _, logs = runs
    single = {r["iteration"]: r for r in logs["single"]}
    records = logs[layout]
    assert [r["iteration"] for r in records] == list(range(1, LAYOUT_ITERS + 1))
    for r in records:
        ref = single[r["iteration"]]
        for key in ("lm loss", "grad-norm") + METRICS:
            assert r[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), f"{layout} iteration {r['iteration']} {key}"
    assert records[-1]["rewards/margins"] > 0  # it trained: these are not step-0 values


def test_smoke_run_learns_the_preference(runs):
    d, _, _, logs = runs
    records = logs["single"]
    assert len(records) == SMOKE_ITERS
    last = records[-5:]
    assert np.mean([r["rewards/accuracies"] for r in last]) > 0.9
    early = np.mean([r["rewards/margins"] for r in records[1:6]])
    assert np.mean([r["rewards/margins"] for r in last]) > 3 * early > 0
    assert np.mean([r["lm loss"] for r in last]) < 0.5 < math.log(2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(d / "tb")).Reload()
    assert set(METRICS) <= set(events.Tags()["scalars"])
    assert len(events.Scalars("rewards/accuracies")) == SMOKE_ITERS


def test_export_prefers_the_chosen_replies(runs):
    """The exported model (transformers) gives the chosen reply a higher log-probability than the rejected
    one on nearly every pair; the starting weights' own preference (the stored reference) is weaker."""
    d, _, _, _ = runs
    out = d / "hf"
    spec = importlib.util.spec_from_file_location("convert_to_hf", REPO / "tools" / "convert_to_hf.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)   # in-process: no second interpreter start-up
    assert tool.main(["--load", str(d / "ckpt"), "--out", str(out), "--vocab-size", str(VOCAB + 1),
                      "--no-progress"]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()

    def reply_logp(prompt, reply):
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        return float(logps[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]].sum())

    margins = np.array([reply_logp(p, c) - reply_logp(p, r) for p, c, r in PAIRS])
    with np.load(d / "ckpt" / "dpo_reference_logps.npz") as f:
        reference = f["train"]
    assert (margins > 0).mean() > 0.9
    assert margins.mean() > (reference[:, 0] - reference[:, 1]).mean() + 5


def test_resume_reuses_the_stored_reference(runs, tmp_path):
    """A resumed run loads the reference of the starting weights (the model now is not the reference); its
    first step continues from the trained margins, not from 0."""
    d, data, _, _ = runs
    log = tmp_path / "resumed.jsonl"
    proc = run_pretrain(ARGS + data + ["--train-iters", SMOKE_ITERS + 1, "--load", d / "ckpt", "--log-json", log])
    assert "DPO reference log-probs loaded from" in proc.stdout
    margins = read_log(log, "rewards/margins")
    assert list(margins) == [SMOKE_ITERS + 1] and margins[SMOKE_ITERS + 1] > 0.5
