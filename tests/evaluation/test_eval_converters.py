"""tools/convert_eval_tasks.py against lm-evaluation-harness's own task definitions: for ARC, HellaSwag,
PIQA, WinoGrande and MMLU (5-shot-style few-shot from a dev file), the harness's installed task YAML (its
prompt templates and document processing) is pointed at the same rows, and every request it builds, its
gold indices and its acc_norm divisors must equal those of the converted task file. No model runs."""

import importlib.util
import json
import os

import pytest
from launch import REPO

from megatron_ext.evaluation.tasks import load_task

ROWS = {
    "arc": [
        {"id": "q1", "question": "Which is warm?", "answerKey": "B",
         "choices": {"text": ["ice", "the sun", "snow"], "label": ["A", "B", "C"]}},
        {"id": "q2", "question": "Two plus two?", "answerKey": "2",
         "choices": {"text": ["3", "4", "5", "22"], "label": ["1", "2", "3", "4"]}},
    ],
    "hellaswag": [
        {"activity_label": "Baking cookies", "ctx_a": "A woman puts dough on a tray.", "ctx_b": "she",
         "endings": ["puts the tray in the oven.", "eats the [title] tray.", "walks  away [step] quickly."],
         "label": "0"},
        {"activity_label": "Home and Garden", "ctx_a": "[header] How to water plants [title] Fill a can.",
         "ctx_b": "then", "endings": ["pour it.", "drink it.", "paint it.", "sell it."], "label": "2"},
    ],
    "piqa": [
        {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid.", "label": 0},
        {"goal": "Dry a shirt", "sol1": "Put it in water.", "sol2": "Hang it in the sun.", "label": 1},
    ],
    "winogrande": [
        {"sentence": "The trophy did not fit in the case because _ was too big.", "option1": "the trophy",
         "option2": "the case", "answer": "1"},
        {"sentence": "Sam gave Pat a book because _ had finished reading it.", "option1": "Sam",
         "option2": "Pat", "answer": "1"},
    ],
    "mmlu": [
        {"question": "  Which bone is in the arm? ", "subject": "anatomy",
         "choices": ["femur", "humerus", "tibia", "fibula"], "answer": 1},
        {"question": "Where is the heart?", "subject": "anatomy",
         "choices": ["chest", "foot", "hand", "head"], "answer": 0},
    ],
}
MMLU_DEV = [
    {"question": "How many lungs?", "subject": "anatomy", "choices": ["1", "2", "3", "4"], "answer": 1},
    {"question": "Skin is an?", "subject": "anatomy", "choices": ["organ", "bone", "nerve", "cell"], "answer": 0},
    {"question": "Unused?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 3},
]
HARNESS_YAML = {"arc": "arc/arc_easy.yaml", "hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml",
                "winogrande": "winogrande/default.yaml", "mmlu": "mmlu/default/mmlu_anatomy.yaml"}


def _tool():
    spec = importlib.util.spec_from_file_location("convert_eval_tasks", REPO / "tools" / "convert_eval_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def harness_tasks(tmp_path_factory):
    """The harness's tasks, built from its installed YAML over local copies of ROWS."""
    root = tmp_path_factory.mktemp("harness")
    patch = pytest.MonkeyPatch()  # the datasets library reads these: offline, and its cache under root
    for key, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_CACHE", str(root / "cache"))):
        patch.setenv(key, value)
    import lm_eval
    from lm_eval.tasks import TaskManager, get_task_dict

    installed = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    for fmt, rows in ROWS.items():
        _write(root / f"{fmt}.jsonl", rows)
        files = {"test": str(root / f"{fmt}.jsonl")}
        extra = ""
        if fmt == "mmlu":
            _write(root / "mmlu_dev.jsonl", MMLU_DEV)
            files["dev"] = str(root / "mmlu_dev.jsonl")
            extra = "fewshot_split: dev\nnum_fewshot: 2\n"
        (root / "yaml").mkdir(exist_ok=True)
        (root / "yaml" / f"local_{fmt}.yaml").write_text(
            f"include: {os.path.join(installed, HARNESS_YAML[fmt])}\ntask: local_{fmt}\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files: {json.dumps(files)}\n"
            f"training_split: null\nvalidation_split: null\ntest_split: test\n{extra}")
    manager = TaskManager(include_path=str(root / "yaml"), include_defaults=False)
    try:
        tasks = get_task_dict([f"local_{fmt}" for fmt in ROWS], manager)
        yield root, {fmt: tasks[f"local_{fmt}"] for fmt in ROWS}
    finally:
        patch.undo()


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_converted_task_asks_what_the_harness_asks(fmt, harness_tasks, tmp_path):
    root, tasks = harness_tasks
    harness = tasks[fmt]
    if fmt == "mmlu":
        harness.set_config("num_fewshot", 2)
    harness.build_all_requests(limit=None, rank=0, world_size=1)
    argv = ["--format", fmt, "--input", str(root / f"{fmt}.jsonl"), "--output", str(tmp_path / "task.jsonl")]
    if fmt == "mmlu":
        argv += ["--fewshot-file", str(root / "mmlu_dev.jsonl"), "--num-fewshot", "2"]
    assert _tool().main(argv) == 0
    ours = load_task(str(tmp_path / "task.jsonl"))

    theirs = [tuple(i.args) for i in sorted(harness.instances, key=lambda i: (i.doc_id, i.idx))]
    assert ours.requests() == theirs
    docs = list(harness.eval_docs)
    # multiple input (WinoGrande): the harness's doc_to_text is the gold index, doc_to_target the continuation
    gold = harness.doc_to_text if harness.multiple_input else harness.doc_to_target
    assert [d.gold for d in ours.documents] == [gold(doc) for doc in docs]
    assert [ours.choice_lengths(d) for d in ours.documents] == [[len(c) for c in harness.doc_to_choice(doc)]
                                                                 for doc in docs]
    if fmt == "mmlu":
        assert ours.name == "mmlu_anatomy" and "about anatomy." in ours.description


def test_converter_errors_name_the_file_line_and_fix(tmp_path):
    from megatron_ext.evaluation.converters import convert

    bad = tmp_path / "piqa.jsonl"
    _write(bad, [ROWS["piqa"][0], {"goal": "x", "sol1": "y", "label": 0}])
    with pytest.raises(SystemExit, match=r"piqa.jsonl:2: a document of --format piqa needs .*missing sol2 .*--format"):
        convert("piqa", str(bad))
    with pytest.raises(SystemExit, match="--num-fewshot needs --fewshot-file"):
        convert("arc", str(tmp_path / "piqa.jsonl"), num_fewshot=1)
    mixed = tmp_path / "mmlu.jsonl"
    _write(mixed, [ROWS["mmlu"][0], dict(ROWS["mmlu"][1], subject="virology")])
    with pytest.raises(SystemExit, match="mixes MMLU subjects .*anatomy, virology"):
        convert("mmlu", str(mixed))
