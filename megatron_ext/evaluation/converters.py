"""Task files (evaluation/tasks.py) from the documents lm-evaluation-harness reads for ARC, HellaSwag, PIQA,
WinoGrande and MMLU: the rows of their Hugging Face datasets, as JSON lines, a JSON list or Parquet, which
the user supplies (nothing is downloaded here).

Each converter writes the prompt, choices and gold index the harness's task definition (lm_eval/tasks/*,
0.4.x) gives that document, so the same model scores the same:

- arc (allenai/ai2_arc, ARC-Easy or ARC-Challenge): "Question: {question}\\nAnswer:", choices.text,
  gold = choices.label.index(answerKey);
- hellaswag (Rowan/hellaswag): the harness's preprocess of activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize() ("[title]" becomes ". ", other [bracketed] artefacts are removed, double spaces closed),
  preprocessed endings, gold = int(label);
- piqa: "Question: {goal}\\nAnswer:", [sol1, sol2], gold = label;
- winogrande (allenai/winogrande): multiple input: one context per option, the sentence up to the blank with
  the option put in; the continuation is the rest of the sentence, stripped; gold = answer "1"/"2" -> 0/1;
- mmlu (cais/mmlu): "{question.strip()}\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:", choices A-D,
  gold = answer, and the description "The following are multiple choice questions (with answers) about
  {subject}.\\n\\n" (a file holds one subject; --subject when the rows do not say).

Few-shot examples: the first K documents of another file of the same format (the harness's `first_n`
sampler, which MMLU uses over its dev split; the other tasks sample at random by default).
"""

from __future__ import annotations

import json
import os
import re

from megatron_ext.evaluation.tasks import TaskFileError

FORMATS = ("arc", "hellaswag", "piqa", "winogrande", "mmlu")


def read_documents(path: str) -> list[tuple[str, dict]]:
    """(where, row) for each row of a .jsonl/.json/.parquet file; `where` names the file and line/row."""
    if not os.path.isfile(path):
        raise TaskFileError(f"{path}: no such file (the converters read files you supply: the dataset rows as "
                            "JSON lines, a JSON list or Parquet)")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise TaskFileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        return [(f"{path}: row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return [(f"{path}: item {i}", row) for i, row in enumerate(rows)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{path}:{number}: not valid JSON ({exc.msg}); one JSON object per line") from None
    return out


def _need(row, where: str, fmt: str, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if not isinstance(row, dict) or f not in row]
    if missing:
        raise TaskFileError(f"{where}: a document of --format {fmt} needs the fields {', '.join(fields)}; missing "
                            f"{', '.join(missing)} (is this the right --format?)")


def arc(row: dict, where: str) -> dict:
    _need(row, where, "arc", ("question", "choices", "answerKey"))
    labels, texts = row["choices"].get("label"), row["choices"].get("text")
    if row["answerKey"] not in (labels or []):
        raise TaskFileError(f"{where}: answerKey {row['answerKey']!r} is not one of the choices' labels {labels}")
    return {"context": f"Question: {row['question']}\nAnswer:", "choices": list(texts),
            "gold": labels.index(row["answerKey"])}


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: dict, where: str) -> dict:
    _need(row, where, "hellaswag", ("activity_label", "ctx_a", "ctx_b", "endings", "label"))
    if str(row["label"]).strip() == "":
        raise TaskFileError(f"{where}: no label (HellaSwag's test split is unlabelled): convert the validation split")
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"context": _hellaswag_text(row["activity_label"] + ": " + context),
            "choices": [_hellaswag_text(e) for e in row["endings"]], "gold": int(row["label"])}


def piqa(row: dict, where: str) -> dict:
    _need(row, where, "piqa", ("goal", "sol1", "sol2", "label"))
    return {"context": f"Question: {row['goal']}\nAnswer:", "choices": [row["sol1"], row["sol2"]],
            "gold": int(row["label"])}


def winogrande(row: dict, where: str) -> dict:
    _need(row, where, "winogrande", ("sentence", "option1", "option2", "answer"))
    sentence = row["sentence"]
    if "_" not in sentence:
        raise TaskFileError(f"{where}: the sentence has no blank '_' to fill")
    if str(row["answer"]) not in ("1", "2"):
        raise TaskFileError(f"{where}: answer {row['answer']!r} is not '1' or '2' (WinoGrande's test split is "
                            "unlabelled: convert the validation split)")
    blank = sentence.index("_")
    return {"contexts": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
            "continuation": sentence[blank + 1:].strip(), "gold": {"1": 0, "2": 1}[str(row["answer"])]}


def mmlu(row: dict, where: str) -> dict:
    _need(row, where, "mmlu", ("question", "choices", "answer"))
    choices = row["choices"]
    if len(choices) != 4:
        raise TaskFileError(f"{where}: an MMLU question has 4 choices, this one {len(choices)}")
    letters = "ABCD"
    context = row["question"].strip() + "".join(f"\n{letters[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"
    return {"context": context, "choices": list(letters), "gold": int(row["answer"])}


CONVERTERS = {"arc": arc, "hellaswag": hellaswag, "piqa": piqa, "winogrande": winogrande, "mmlu": mmlu}


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def convert(fmt: str, path: str, fewshot_path: str | None = None, num_fewshot: int = 0,
            limit: int | None = None, subject: str | None = None) -> tuple[list[dict], dict]:
    """(documents, task header) in evaluation/tasks.py's form from a file of FMT rows."""
    if fmt not in CONVERTERS:
        raise TaskFileError(f"--format {fmt}: unknown; choose one of {', '.join(FORMATS)}")
    if num_fewshot and not fewshot_path:
        raise TaskFileError("--num-fewshot needs --fewshot-file (the split to take the examples from, e.g. the "
                            "training split; MMLU's dev split)")
    rows = read_documents(path)[:limit] if limit else read_documents(path)
    documents = [CONVERTERS[fmt](row, where) for where, row in rows]
    header = {}
    if num_fewshot:
        examples = read_documents(fewshot_path)
        if len(examples) < num_fewshot:
            raise TaskFileError(f"--fewshot-file {fewshot_path} has {len(examples)} documents, fewer than "
                                f"--num-fewshot {num_fewshot}")
        header["fewshot"] = [CONVERTERS[fmt](row, where) for where, row in examples[:num_fewshot]]
    if fmt == "mmlu":
        subjects = {row.get("subject") for _, row in rows if row.get("subject")}
        if subject is None and len(subjects) > 1:
            raise TaskFileError(f"{path} mixes MMLU subjects ({', '.join(sorted(subjects))}): the harness evaluates "
                                "each subject as its own task with its own description; split the file by subject")
        subject = subject or (subjects.pop() if subjects else None)
        if subject is None:
            raise TaskFileError(f"{path}: the rows name no subject: pass --subject (e.g. high_school_physics)")
        header["description"] = mmlu_description(subject)
        header["name"] = f"mmlu_{subject}"
    return documents, header
