"""The task file format: prompts with few-shot examples and a description, the metrics, and the errors a
bad file gets (file, line, what is wrong, what to do)."""

import json

import pytest

from megatron_ext.evaluation.tasks import load_task, score_task, write_task


def test_prompt_is_description_then_solved_examples_then_the_question(tmp_path):
    path = tmp_path / "t.jsonl"
    write_task(path, [{"context": "Q: 2+2?\nA:", "choices": ["4", "five"], "gold": 0},
                      {"contexts": ["Sam, so", "Pat, so"], "continuation": "he left.", "gold": 1,
                       "fewshot": [{"context": "Q: own?\nA:", "choices": ["yes"], "gold": 0}]}],
               {"description": "Math.\n\n", "target_delimiter": "~", "fewshot_delimiter": "|",
                "fewshot": [{"context": "Q: 1+1?\nA:", "choices": ["3", "2"], "gold": 1},
                            {"contexts": ["X a", "X b"], "continuation": "end", "gold": 0}]})
    task = load_task(str(path))
    shots = "Math.\n\nQ: 1+1?\nA:~2|X a~end|"
    assert task.name == "t"
    assert task.requests() == [(shots + "Q: 2+2?\nA:", "~4"), (shots + "Q: 2+2?\nA:", "~five"),
                               ("Math.\n\nQ: own?\nA:~yes|Sam, so", "~he left."),
                               ("Math.\n\nQ: own?\nA:~yes|Pat, so", "~he left.")]
    # acc: argmax of the sums; acc_norm: of the sums over the choice's characters (not the delimiter's);
    # a multiple-input document divides by its contexts' lengths, as the harness does.
    result = score_task(task, [-4.0, -6.0, -7.0, -7.7])
    assert [p["pred"] for p in result.predictions] == [0, 0]
    assert [p["pred_norm"] for p in result.predictions] == [1, 0]
    assert (result.acc, result.acc_norm) == (0.5, 0.0)
    assert load_task(str(path), limit=1).documents == task.documents[:1]


@pytest.mark.parametrize("lines, message", [
    (['{"context": "a", "choices": ["x"], "gold": 0}', "{not json"], r"t.jsonl:2: not valid JSON"),
    (['{"context": "a", "choices": ["x", "y"], "gold": 2}'], r"t.jsonl:1: \"gold\" must be the index .*\[0, 2\)"),
    (['{"context": "a", "choices": [], "gold": 0}'], r"t.jsonl:1: \"choices\" must be a non-empty list"),
    (['{"question": "a", "choices": ["x"], "gold": 0}'], r"t.jsonl:1: \"context\" must be a string"),
    (['{"contexts": ["a", "b"], "gold": 0}'], r"t.jsonl:1: .*needs a \"continuation\""),
    (['{"context": "a", "choices": ["x"], "gold": 0}', '{"task": {"name": "n"}}'], r"t.jsonl:2: .*must be the first"),
    (['{"task": {"shots": 5}}'], r"t.jsonl:1: .*unknown: shots"),
    (['{"task": {"name": "n"}}'], r"has no documents"),
])
def test_bad_task_files_are_refused_with_the_place_and_the_fix(tmp_path, lines, message):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=message):
        load_task(str(path))


def test_missing_task_file_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="no such file .*convert_eval_tasks.py"):
        load_task(str(tmp_path / "absent.jsonl"))


def test_written_task_file_is_one_json_object_per_line(tmp_path):
    path = tmp_path / "t.jsonl"
    write_task(path, [{"context": "é", "choices": ["a"], "gold": 0}], {"name": "n"})
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"task": {"name": "n"}}, {"context": "é", "choices": ["a"], "gold": 0}]
    assert not (tmp_path / "t.jsonl.tmp").exists()


def test_evaluator_refuses_a_limit_below_one_and_a_run_without_tokenizer(tmp_path):
    from megatron_ext.evaluation.in_loop import TaskEvaluator

    path = tmp_path / "t.jsonl"
    write_task(path, [{"context": "a", "choices": ["x"], "gold": 0}])
    with pytest.raises(SystemExit, match="--eval-tasks-limit 0: give a number of documents >= 1"):
        TaskEvaluator([str(path)], object(), 64, 1, limit=0)
    with pytest.raises(SystemExit, match="--eval-tasks needs the run's tokenizer"):
        TaskEvaluator([str(path)], None, 64, 1)


def test_two_task_files_with_one_name_are_refused(tmp_path):
    from megatron_ext.evaluation.in_loop import TaskEvaluator

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_task(tmp_path / sub / "arc.jsonl", [{"context": "a", "choices": ["x"], "gold": 0}])
    with pytest.raises(SystemExit, match="two files are both named arc"):
        TaskEvaluator([str(tmp_path / "a" / "arc.jsonl"), str(tmp_path / "b" / "arc.jsonl")], object(), 64, 1)
