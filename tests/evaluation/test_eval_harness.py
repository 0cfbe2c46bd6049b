"""Downstream evaluation against lm-evaluation-harness (issue 17 acceptance).

One tiny LLaMA trained 2 iterations with --eval-tasks, at TP2, PP2, DP2 and on one process (four launches
started together; the one-process run saves every iteration). Then tools/eval_checkpoints.py evaluates
that run's checkpoints at DP2 (resuming after an iteration already in its CSV) while lm-evaluation-harness
scores the Hugging Face export of iteration 2 (its command line, as docs/evaluation.md gives it) with local
task definitions over the same documents:
a plain multiple-choice task (an empty context, contexts ending in a space), a WinoGrande-style
multiple-input task, and a task with a description and 2 few-shot examples (long enough to be truncated to
the model's 64-token context). The tokenizer is byte-level BPE whose encode() adds a BOS, as LLaMA's.
"""

import csv
import glob
import json
import math
import os
import subprocess
import sys

import pytest
from eval_helpers import (make_documents, make_multiple_input_documents, save_bpe_tokenizer, write_harness_tasks,
                          write_jsonl)
from launch import REPO, read_log, start_pretrain, subprocess_env, torchrun_cmd, wait_all

TASKS = ("mc", "mi", "fs")
LAYOUTS = {"single": (1, []), "tp2": (2, ["--tensor-model-parallel-size", "2"]),
           "pp2": (2, ["--pipeline-model-parallel-size", "2"]), "dp2": (2, [])}


def _task_files(root):
    from megatron_ext.evaluation.tasks import write_task

    mc, mi = make_documents(1, 12), make_multiple_input_documents(2, 6)
    fewshot, fs = make_documents(4, 2), make_documents(3, 6)
    description = "Answer the questions.\n\n"
    ours = {name: str(root / f"{name}.jsonl") for name in TASKS}
    write_task(ours["mc"], mc)
    write_task(ours["mi"], mi)
    write_task(ours["fs"], fs, {"description": description, "fewshot": fewshot})
    # The harness reads plain document files (no header line); the few-shot examples are its train split.
    plain = {name: str(root / f"harness_{name}.jsonl") for name in TASKS}
    for name, docs in (("mc", mc), ("mi", mi), ("fs", fs)):
        write_jsonl(plain[name], docs)
    write_jsonl(root / "harness_fs_train.jsonl", fewshot)
    write_harness_tasks(root / "harness_tasks", {
        "mc": dict(test=plain["mc"]), "mi": dict(test=plain["mi"], kind="multiple_input"),
        "fs": dict(test=plain["fs"], fewshot=(str(root / "harness_fs_train.jsonl"), 2), description=description)})
    return [ours[name] for name in TASKS]


def start_harness(hf_dir, tasks_dir, out_dir, cache_dir) -> subprocess.Popen:
    """docs/evaluation.md's lm-evaluation-harness command line on the export, with the local tasks."""
    lm_eval = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    env = dict(subprocess_env(), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(cache_dir))
    return subprocess.Popen([lm_eval, "--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32",
                             "--tasks", ",".join(TASKS), "--include_path", str(tasks_dir), "--batch_size", "8",
                             "--device", "cpu", "--output_path", str(out_dir), "--log_samples"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_harness(out_dir) -> dict:
    """{"results": task -> metrics, "samples": task -> per-document records} from --output_path."""
    (results,) = glob.glob(os.path.join(out_dir, "**", "results_*.json"), recursive=True)
    samples = {}
    for task in TASKS:
        (path,) = glob.glob(os.path.join(out_dir, "**", f"samples_{task}_*.jsonl"), recursive=True)
        samples[task] = [json.loads(line) for line in open(path)]
    return {"results": json.load(open(results))["results"], "samples": samples}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    save_bpe_tokenizer(root / "tokenizer")
    task_files = _task_files(root)
    common = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--tokenizer-type", "HuggingFaceTokenizer",
              "--tokenizer-model", root / "tokenizer", "--micro-batch-size", "2", "--global-batch-size", "4",
              "--train-iters", "2", "--lr", "1e-2", "--lr-decay-style", "constant", "--seed", "1234",
              "--log-interval", "1", "--eval-interval", "2", "--eval-iters", "1", "--eval-tasks", *task_files]
    save = root / "run"
    procs = {}
    for name, (nproc, layout) in LAYOUTS.items():
        extra = ["--save", save, "--save-interval", "1", "--tensorboard-dir", root / "tb"] if name == "single" else []
        procs[name] = start_pretrain([*common, *layout, *extra, "--log-json", root / f"{name}.json"], nproc=nproc)
    outputs = wait_all(procs)

    # eval_checkpoints at DP2 resumes after iteration 1, which a previous (pretend) evaluation left in the CSV.
    table = root / "eval.csv"
    columns = ["iteration", "consumed_samples", "validation_loss"] + [
        f"{t}_{m}" for t in TASKS for m in ("acc", "acc_norm")] + ["seconds"]
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerow([1, 4] + [0.125] * (len(columns) - 2))
    tool = subprocess.Popen(
        torchrun_cmd(2, str(REPO / "tools" / "eval_checkpoints.py")) + [str(a) for a in [
            "--load", save, "--csv", table, "--samples-dir", root / "samples", "--mock-data", "--eval-iters", "1",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--eval-tasks", *task_files]],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    harness = None
    try:
        from megatron_ext.checkpoint.convert import megatron_to_hf

        megatron_to_hf(str(save), str(root / "hf"), iteration=2, progress=False)
        harness = start_harness(root / "hf", root / "harness_tasks", root / "harness_out", root / "datasets_cache")
    finally:
        tool_output = tool.communicate(timeout=600)[0]
        harness_output = harness.communicate(timeout=600)[0] if harness else ""
    assert tool.returncode == 0, tool_output[-5000:]
    assert harness.returncode == 0, harness_output[-5000:]
    harness = read_harness(root / "harness_out")
    return dict(root=root, outputs=outputs, harness=harness, tool_output=tool_output, table=table)


def _in_loop(root, layout: str, iteration: int) -> dict:
    records = [json.loads(line) for line in open(root / f"{layout}.json")]
    (record,) = [r for r in records if r["iteration"] == iteration and "mc/acc" in r]
    return record


def test_in_loop_scores_equal_the_harness_on_the_export(evaluated):
    record = _in_loop(evaluated["root"], "single", 2)
    for task in TASKS:
        harness = evaluated["harness"]["results"][task]
        assert record[f"{task}/acc"] == pytest.approx(harness["acc,none"], abs=1e-12), task
        assert record[f"{task}/acc_norm"] == pytest.approx(harness["acc_norm,none"], abs=1e-12), task
    assert record["eval-tasks-seconds"] > 0


def test_checkpoint_evaluation_equals_the_harness_item_by_item(evaluated):
    samples = evaluated["root"] / "samples" / "iter_0000002"
    for task in TASKS:
        ours = [json.loads(line) for line in open(samples / f"{task}.jsonl")]
        theirs = sorted(evaluated["harness"]["samples"][task], key=lambda s: s["doc_id"])
        assert len(ours) == len(theirs) > 0
        for doc, (mine, sample) in enumerate(zip(ours, theirs)):
            lls = [float(resp[0]) for resp in sample["filtered_resps"]]  # the samples file holds strings
            assert mine["loglikelihoods"] == pytest.approx(lls, abs=1e-4), (task, doc)
            ordered = sorted(lls, reverse=True)
            assert ordered[0] - ordered[1] > 1e-3, (task, doc, "choices too close to compare argmaxes")
            assert (mine["acc"], mine["acc_norm"]) == (sample["acc"], sample["acc_norm"]), (task, doc)


def test_task_scores_equal_at_every_layout(evaluated):
    for iteration in (0, 2):
        single = _in_loop(evaluated["root"], "single", iteration)
        for layout in ("tp2", "pp2", "dp2"):
            other = _in_loop(evaluated["root"], layout, iteration)
            for task in TASKS:
                for metric in ("acc", "acc_norm"):
                    key = f"{task}/{metric}"
                    assert other[key] == single[key], (layout, iteration, key)


def test_eval_checkpoints_resumes_and_writes_csv_and_png(evaluated):
    root = evaluated["root"]
    rows = {int(r["iteration"]): r for r in csv.DictReader(open(evaluated["table"]))}
    assert sorted(rows) == [1, 2]
    assert float(rows[1]["mc_acc"]) == 0.125  # the row already there: skipped, not evaluated again
    assert "already has iterations [1]" in evaluated["tool_output"]
    in_loop = _in_loop(root, "single", 2)
    for task in TASKS:
        for metric in ("acc", "acc_norm"):
            assert float(rows[2][f"{task}_{metric}"]) == pytest.approx(in_loop[f"{task}/{metric}"], abs=1e-12)
    # The held-out loss is the training run's validation loss at that iteration (same batches).
    validation = read_log(root / "single.json", "validation lm loss")[2]
    assert math.isclose(float(rows[2]["validation_loss"]), validation, rel_tol=1e-5)
    assert int(rows[2]["consumed_samples"]) == 8
    with open(root / "eval.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_task_scores_are_tensorboard_scalars(evaluated):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(evaluated["root"] / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"{t}/{m}" for t in TASKS for m in ("acc", "acc_norm")} | {"eval-tasks-seconds"} <= tags
    assert [e.step for e in events.Scalars("mc/acc")] == [0, 2]
