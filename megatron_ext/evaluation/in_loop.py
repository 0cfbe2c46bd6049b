"""The downstream tasks of a run (--eval-tasks): loaded and tokenised once, scored at --eval-interval next
to the validation loss (training/pretrain.py), and by tools/eval_checkpoints.py on each saved iteration."""

from __future__ import annotations

import time

from megatron_ext.evaluation.scoring import encode_requests, loglikelihoods
from megatron_ext.evaluation.tasks import TaskFileError, TaskResult, load_task, score_task


class TaskEvaluator:
    def __init__(self, paths, tokenizer, max_length: int, micro_batch_size: int, limit: int | None = None):
        """paths: task files (evaluation/tasks.py); tokenizer: the run's; max_length: the model's context
        (max_position_embeddings, what the harness truncates to on the export)."""
        if limit is not None and limit < 1:
            raise SystemExit(f"error: --eval-tasks-limit {limit}: give a number of documents >= 1 (or leave it out "
                             "to score every document)")
        if tokenizer is None:
            raise SystemExit("error: --eval-tasks needs the run's tokenizer to read the tasks' text: give "
                             "--tokenizer-type/--tokenizer-model (mock data without a tokenizer has none)")
        self.tasks = [load_task(path, limit) for path in paths]
        names = [task.name for task in self.tasks]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise TaskFileError(f"--eval-tasks: two files are both named {', '.join(duplicated)}: give each a "
                                'distinct file name or {"task": {"name": ...}} header')
        self.rows = [encode_requests(tokenizer, task.requests(), max_length, f"{task.path}: ") for task in self.tasks]
        self.micro_batch_size = micro_batch_size
        self.last_seconds = 0.0

    @property
    def names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def evaluate(self, model) -> dict[str, TaskResult] | None:
        """Every task's result on the last pipeline stage (None on the others); all ranks must call it.
        Wall time in .last_seconds."""
        start = time.perf_counter()
        results = {}
        for task, rows in zip(self.tasks, self.rows):
            lls = loglikelihoods(model, rows, self.micro_batch_size)
            if lls is not None:
                results[task.name] = score_task(task, lls)
        self.last_seconds = time.perf_counter() - start
        return results or None


def build_task_evaluator(config, tokenizer=None) -> TaskEvaluator | None:
    """From a RunConfig's --eval-tasks (None without); the tokenizer is the run's (built here when not given)."""
    flags = config.flags
    paths = getattr(flags, "eval_tasks", None)
    if not paths:
        return None
    if tokenizer is None:
        from megatron_ext.data.build import build_vocab

        tokenizer, _ = build_vocab(config.data)
    return TaskEvaluator(paths, tokenizer, config.model.max_position_embeddings, config.training.micro_batch_size,
                         getattr(flags, "eval_tasks_limit", None))


def in_loop_evaluator(config) -> TaskEvaluator | None:
    """pretrain_llama.py's evaluator: --eval-tasks are scored at --eval-interval, so they need it."""
    if getattr(config.flags, "eval_tasks", None) and not config.logging.eval_interval:
        raise SystemExit("error: --eval-tasks are scored at --eval-interval: give --eval-interval N (or score saved "
                         "checkpoints afterwards with tools/eval_checkpoints.py)")
    return build_task_evaluator(config)
