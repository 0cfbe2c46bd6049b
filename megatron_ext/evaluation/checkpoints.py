"""Every saved iteration of a run, evaluated in turn (tools/eval_checkpoints.py): the model built once as
training builds it (any TP/PP/DP), each iteration's weights loaded into it, the held-out loss computed by the
training loop's own evaluate() on the same batches every time, and the tasks scored; one CSV row per
iteration, written as soon as it is done, so a stopped evaluation resumes after the last row."""

from __future__ import annotations

import csv
import os
import re
import time

import torch
import torch.distributed as dist

ITERATION_DIR = re.compile(r"iter_(\d+)(\.old)?$")


def saved_iterations(root: str) -> list[int]:
    """Complete iterations under ROOT (ITER, or ITER.old left by a crash between a re-save's renames;
    never ITER.tmp, a save that did not finish)."""
    found = set()
    for name in os.listdir(root):
        match = ITERATION_DIR.match(name)
        if match and os.path.isfile(os.path.join(root, name, "common.pt")):
            found.add(int(match.group(1)))
    return sorted(found)


def load_model_weights(root: str, iteration: int, model, run) -> dict:
    """ROOT's ITERATION weights into the built (DDP-wrapped) chunks, any layout. Returns its common.pt."""
    from megatron_ext.checkpoint.dist import load_model_weights as load_weights

    return load_weights(root, iteration, [chunk.module for chunk in model], run)[0]


class ResultsTable:
    """The CSV: iteration, consumed_samples, validation_loss, TASK_acc, TASK_acc_norm..., seconds. Rows already
    there are kept (the iterations to skip); each new row rewrites the file through a temporary and a rename."""

    def __init__(self, path: str, task_names: list[str], with_loss: bool):
        self.path = path
        self.columns = (["iteration", "consumed_samples"] + (["validation_loss"] if with_loss else [])
                        + [f"{name}_{metric}" for name in task_names for metric in ("acc", "acc_norm")]
                        + ["seconds"])
        self.rows: list[dict] = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != self.columns:
                    raise SystemExit(f"error: {path} has columns {reader.fieldnames}, this evaluation writes "
                                     f"{self.columns} (other tasks or held-out data): pass another --csv, or "
                                     "delete it to start over")
                self.rows = list(reader)

    def done(self) -> set[int]:
        return {int(row["iteration"]) for row in self.rows}

    def add(self, row: dict) -> None:
        self.rows = sorted(self.rows + [row], key=lambda r: int(r["iteration"]))
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def plot(table: ResultsTable, path: str) -> None:
    """The curves against iteration: held-out loss, then acc and acc_norm of each task (LLM360's Amber
    figures are of this kind). Written through a temporary file and a rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [int(r["iteration"]) for r in table.rows]
    tasks = [c[:-len("_acc")] for c in table.columns if c.endswith("_acc")]
    panels = (["validation_loss"] if "validation_loss" in table.columns else []) + tasks
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "validation_loss":
            ax.plot(iterations, [float(r[panel]) for r in table.rows], marker="o")
            ax.set_title("held-out loss")
        else:
            for metric in ("acc", "acc_norm"):
                ax.plot(iterations, [float(r[f"{panel}_{metric}"]) for r in table.rows], marker="o", label=metric)
            ax.set_title(panel)
            ax.legend()
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def evaluate_checkpoints(run, root: str, csv_path: str, png_path: str | None, samples_dir: str | None,
                         iterations: list[int] | None = None, device: torch.device | None = None,
                         heldout: bool = True) -> list[int]:
    """Evaluates ROOT's saved iterations not yet in CSV_PATH (RunConfig `run`: the checkpoint's model at this
    launch's layout, the held-out data when `heldout`, --eval-tasks). Returns the iterations evaluated now."""
    import json

    from megatron_ext.data.build import build_datasets, build_vocab
    from megatron_ext.data.loader import micro_batches
    from megatron_ext.evaluation.in_loop import build_task_evaluator
    from megatron_ext.models.config import transformer_config
    from megatron_ext.models.gpt import build_model
    from megatron_ext.models.parametrization import build_parametrization
    from megatron_ext.training.loop import evaluate
    from megatron_ext.training.parallel import data_parallel_rank_and_size, initialize_parallel, is_last_rank

    device = device or torch.device("cpu")
    initialize_parallel(run.parallel, run.training.seed)
    tokenizer, vocab_size = build_vocab(run.data)
    run = run.with_vocab(vocab_size)
    tasks = build_task_evaluator(run, tokenizer)
    valid = build_datasets(run.data, run.training, run.logging, tokenizer, vocab_size)[1] if heldout else None
    if heldout and valid is None:
        raise SystemExit("error: the held-out data has no validation share: give a --split with one (e.g. "
                         "--split 0,1,0 for a file that is all held-out text) and --eval-iters > 0")
    if tasks is None and valid is None:
        raise SystemExit("error: nothing to evaluate: give --eval-tasks FILE... and/or held-out data "
                         "(--data-path with a --split that has a validation share)")
    parametrization = build_parametrization(run.model)
    config = transformer_config(run, on_cpu=device.type == "cpu", mup_multipliers=parametrization.multipliers)
    model = build_model(config, run, parametrization, device)  # as training builds it, without an optimizer

    table = ResultsTable(csv_path, tasks.names if tasks else [], valid is not None)
    available = saved_iterations(root)
    wanted = [i for i in (iterations or available) if i not in table.done()]
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise SystemExit(f"error: --iterations {missing} are not saved in {root} (saved: {available})")
    writes = is_last_rank()
    if writes and table.done():
        print(f" > {csv_path} already has iterations {sorted(table.done())}: skipped", flush=True)
    for iteration in wanted:
        start = time.perf_counter()
        common = load_model_weights(root, iteration, model, run)
        row = {"iteration": iteration, "consumed_samples": common.get("consumed_samples", "")}
        if valid is not None:
            dp_rank, dp_size = data_parallel_rank_and_size()
            batches = [micro_batches(valid, 0, run.training.micro_batch_size, dp_rank, dp_size, cycle=True)
                       for _ in model]
            row["validation_loss"] = evaluate(model, batches, run.training, run.logging.eval_iters)
        results = tasks.evaluate(model) if tasks else {}
        for name, result in (results or {}).items():
            row[f"{name}_acc"], row[f"{name}_acc_norm"] = result.acc, result.acc_norm
        dist.barrier()
        row["seconds"] = round(time.perf_counter() - start, 3)
        if writes:
            table.add(row)
            if samples_dir:
                _write_samples(samples_dir, iteration, results or {}, json)
            if png_path:
                plot(table, png_path)
            print(f" > evaluated iteration {iteration} | " + " | ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}"
                                               for k, v in row.items() if k != "iteration") + " |", flush=True)
    return wanted


def _write_samples(directory: str, iteration: int, results: dict, json) -> None:
    """Per task, one line per document: the choices' summed log-probabilities, predictions and gold."""
    target = os.path.join(directory, f"iter_{iteration:07d}")
    os.makedirs(target, exist_ok=True)
    for name, result in results.items():
        path = os.path.join(target, f"{name}.jsonl")
        with open(f"{path}.tmp", "w") as f:
            for prediction in result.predictions:
                f.write(json.dumps(prediction) + "\n")
        os.replace(f"{path}.tmp", path)
