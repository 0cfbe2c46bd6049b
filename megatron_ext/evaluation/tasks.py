"""Multiple-choice tasks in a local JSONL form, the requests they make, and their metrics.

One JSON object per line. A document is either

    {"context": "Question: ...\\nAnswer:", "choices": ["a", "b", ...], "gold": 1}

(each choice is scored as the continuation TARGET_DELIMITER + choice of the context), or, for tasks whose
choices change the context (WinoGrande's "partial evaluation"),

    {"contexts": ["... option one", "... option two"], "continuation": "rest of the sentence", "gold": 0}

(each context is scored with the same continuation). Other keys (an "id") are kept and ignored.

An optional first line {"task": {...}} sets, for the whole file: "name" (default: the file name without
.jsonl), "description" (text put before everything), "target_delimiter" (default " "),
"fewshot_delimiter" (default "\\n\\n") and "fewshot" (a list of solved documents in either form, shown
before every question). A document may carry its own "fewshot" list instead.

The prompt is lm-evaluation-harness's (0.4.x, ConfigurableTask.fewshot_context in plain text):

    description + sum(example context + target_delimiter + example answer + fewshot_delimiter) + context

where an example's answer is choices[gold] (or, multiple-input, its contexts[gold] and continuation), and
each request is (prompt, target_delimiter + choice). So a harness task with the same description, the
same examples (its `first_n` sampler over a few-shot split) and the same delimiters asks for the same
log-likelihoods. The metrics are the harness's `acc` (argmax of the summed log-probabilities) and
`acc_norm` (argmax of the sum divided by the choice's length in characters, not counting the delimiter;
for multiple-input documents the harness divides by the length of each context, and so does this).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

HEADER_KEYS = ("name", "description", "target_delimiter", "fewshot_delimiter", "fewshot")


class TaskFileError(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"error: {message}")


@dataclass(frozen=True)
class Document:
    contexts: tuple[str, ...]   # one (same prompt for every choice) or one per choice (multiple input)
    continuations: tuple[str, ...]  # one per choice, or one shared by every context (multiple input)
    gold: int
    fewshot: tuple | None = None    # the document's own solved examples (Documents), else the task's

    @property
    def multiple_input(self) -> bool:
        return len(self.contexts) > 1

    @property
    def num_choices(self) -> int:
        return len(self.contexts) if self.multiple_input else len(self.continuations)

    def example_text(self, target_delimiter: str) -> str:
        """This document solved, as a few-shot example."""
        if self.multiple_input:
            return self.contexts[self.gold] + target_delimiter + self.continuations[0]
        return self.contexts[0] + target_delimiter + self.continuations[self.gold]


@dataclass(frozen=True)
class Task:
    name: str
    path: str
    documents: tuple[Document, ...]
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot: tuple[Document, ...] = field(default_factory=tuple)

    def prompt_prefix(self, document: Document) -> str:
        examples = document.fewshot if document.fewshot is not None else self.fewshot
        return self.description + "".join(e.example_text(self.target_delimiter) + self.fewshot_delimiter
                                          for e in examples)

    def requests(self) -> list[tuple[str, str]]:
        """(context, continuation) per choice of every document, documents in file order."""
        out = []
        for doc in self.documents:
            prefix = self.prompt_prefix(doc)
            if doc.multiple_input:
                out += [(prefix + c, self.target_delimiter + doc.continuations[0]) for c in doc.contexts]
            else:
                out += [(prefix + doc.contexts[0], self.target_delimiter + c) for c in doc.continuations]
        return out

    def choice_lengths(self, document: Document) -> list[int]:
        """acc_norm's divisor per choice: characters of the choice (the harness's len(doc_to_choice))."""
        return [len(c) for c in (document.contexts if document.multiple_input else document.continuations)]


def _document(obj, where: str, allow_fewshot: bool = True) -> Document:
    if not isinstance(obj, dict):
        raise TaskFileError(f"{where}: expected a JSON object with context/choices/gold, got {type(obj).__name__}")
    gold = obj.get("gold")
    if "contexts" in obj:
        contexts, continuation = obj["contexts"], obj.get("continuation")
        if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
            raise TaskFileError(f'{where}: "contexts" must be a non-empty list of strings')
        if not isinstance(continuation, str):
            raise TaskFileError(f'{where}: a document with "contexts" needs a "continuation" string '
                                '(the text scored after each context)')
        doc_contexts, continuations = tuple(contexts), (continuation,)
        if len(contexts) == 1:  # one context: the ordinary form with one choice
            doc_contexts, continuations = (contexts[0],), (continuation,)
    else:
        context, choices = obj.get("context"), obj.get("choices")
        if not isinstance(context, str):
            raise TaskFileError(f'{where}: "context" must be a string (the prompt before each choice); each line '
                                'is {"context": str, "choices": [str, ...], "gold": int}')
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise TaskFileError(f'{where}: "choices" must be a non-empty list of strings')
        doc_contexts, continuations = (context,), tuple(choices)
    count = len(doc_contexts) if len(doc_contexts) > 1 else len(continuations)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < count:
        raise TaskFileError(f'{where}: "gold" must be the index of the right choice, an integer in [0, {count}); '
                            f"got {gold!r}")
    fewshot = None
    if "fewshot" in obj:
        if not allow_fewshot:
            raise TaskFileError(f"{where}: a few-shot example cannot have few-shot examples of its own")
        fewshot = _examples(obj["fewshot"], f"{where}: fewshot")
    return Document(doc_contexts, continuations, gold, fewshot)


def _examples(items, where: str) -> tuple[Document, ...]:
    if not isinstance(items, list):
        raise TaskFileError(f'{where} must be a list of solved documents ({{"context", "choices", "gold"}})')
    return tuple(_document(item, f"{where}[{i}]", allow_fewshot=False) for i, item in enumerate(items))


def load_task(path: str, limit: int | None = None) -> Task:
    """The task in a JSONL file (the first `limit` documents if given). Errors name the file and line."""
    if not os.path.isfile(path):
        raise TaskFileError(f"--eval-tasks {path}: no such file (write one with tools/convert_eval_tasks.py; "
                            "format in docs/evaluation.md)")
    header, documents = {}, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); one JSON object "
                                    "per line") from None
            if isinstance(obj, dict) and "task" in obj:
                if documents or header:
                    raise TaskFileError(f'{where}: the {{"task": ...}} header must be the first line')
                header = obj["task"]
                unknown = set(header) - set(HEADER_KEYS) if isinstance(header, dict) else None
                if unknown is None or unknown:
                    raise TaskFileError(f'{where}: "task" must be an object with keys among {", ".join(HEADER_KEYS)}'
                                        + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
                for key in ("name", "description", "target_delimiter", "fewshot_delimiter"):
                    if key in header and not isinstance(header[key], str):
                        raise TaskFileError(f'{where}: "task.{key}" must be a string')
                header = dict(header, fewshot=_examples(header.get("fewshot", []), f"{where}: task.fewshot"))
                continue
            documents.append(_document(obj, where))
            if limit is not None and len(documents) >= limit:
                break
    if not documents:
        raise TaskFileError(f"{path} has no documents: one JSON object per line (format in docs/evaluation.md)")
    name = header.get("name") or os.path.splitext(os.path.basename(path))[0]
    return Task(name=name, path=path, documents=tuple(documents), description=header.get("description", ""),
                target_delimiter=header.get("target_delimiter", " "),
                fewshot_delimiter=header.get("fewshot_delimiter", "\n\n"), fewshot=header.get("fewshot", ()))


def write_task(path: str, documents: list[dict], header: dict | None = None) -> None:
    """A task file (header line first when given), written to PATH.tmp then renamed."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        if header:
            f.write(json.dumps({"task": header}, ensure_ascii=False) + "\n")
        for doc in documents:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


@dataclass
class TaskResult:
    name: str
    acc: float
    acc_norm: float
    predictions: list[dict]  # per document: loglikelihoods, pred, pred_norm, gold, acc, acc_norm


def score_task(task: Task, loglikelihoods) -> TaskResult:
    """acc and acc_norm from the summed log-probability of each request (Task.requests() order), as
    lm-evaluation-harness's ConfigurableTask.process_results computes them (np.argmax: the first of ties)."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    expected = sum(doc.num_choices for doc in task.documents)
    if lls.shape != (expected,):
        raise ValueError(f"{task.name}: {lls.shape} log-likelihoods for {expected} requests")
    predictions, start = [], 0
    for doc in task.documents:
        doc_lls = lls[start:start + doc.num_choices]
        start += doc.num_choices
        pred = int(np.argmax(doc_lls))
        pred_norm = int(np.argmax(doc_lls / np.asarray(task.choice_lengths(doc), dtype=np.float64)))
        predictions.append({"loglikelihoods": doc_lls.tolist(), "gold": doc.gold, "pred": pred,
                            "pred_norm": pred_norm, "acc": float(pred == doc.gold),
                            "acc_norm": float(pred_norm == doc.gold)})
    n = len(predictions)
    return TaskResult(task.name, sum(p["acc"] for p in predictions) / n,
                      sum(p["acc_norm"] for p in predictions) / n, predictions)
