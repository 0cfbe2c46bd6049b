"""A run with --eval-interval but no validation set (--split without a validation share, or
--eval-iters 0) trains without validating and says so once at start-up; it used to crash before the
first step with `TypeError: unsupported format string passed to NoneType.__format__`."""

import json

import pytest
from launch import run_pretrain

from megatron_ext.arguments import parse_config
from megatron_ext.data.build import describe_data
from megatron_ext.data.preprocess import preprocess_jsonl
from megatron_ext.training.logging import TrainLogger
from megatron_ext.training.loop import TrainState

MOCK = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--train-iters", "2"]
NOTICE = " > no validation: "


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("novalid")
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(str((7 * d + j) % 500) for j in range(60))}) + "\n"
                           for d in range(40)))
    prefixes, _ = preprocess_jsonl(str(src), str(tmp / "docs"), tokenizer_type="NullTokenizer", vocab_size=500,
                                   append_eod=True, progress=False)
    return prefixes["text"]


def _notices(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(NOTICE)]


@pytest.mark.parametrize("flags,expected", [
    (["--eval-interval", "1000", "--eval-iters", "0"],
     " > no validation: --eval-iters 0 asks for no validation batches; --eval-interval 1000 evaluates nothing"),
    (["--eval-interval", "5", "--eval-iters", "2"], None),  # mock data: a validation set exists
    (["--eval-iters", "0"], None),  # no --eval-interval: nothing was asked for
])
def test_start_up_summary_says_when_there_is_no_validation(flags, expected):
    config = parse_config(MOCK + flags)
    notices = _notices(describe_data(config.data, config.logging))
    assert notices == ([expected] if expected else [])


def test_split_without_validation_share_is_named(corpus):
    def config(split):
        return parse_config(["--model-preset", "tiny", "--device", "cpu", "--train-iters", "2",
                             "--tokenizer-type", "NullTokenizer", "--vocab-size", "500", "--data-path", corpus,
                             "--split", split, "--eval-interval", "5", "--eval-iters", "2"])

    without = config("100,0,0")
    assert _notices(describe_data(without.data, without.logging)) == [
        " > no validation: --split 100,0,0 gives the validation split no share (--split 98,2,0 would give "
        "it 2%); --eval-interval 5 evaluates nothing"]
    with_share = config("98,2,0")
    assert _notices(describe_data(with_share.data, with_share.logging)) == []


def test_logger_skips_a_missing_validation_loss(capsys):
    import torch

    logger = TrainLogger(parse_config(MOCK + ["--eval-interval", "5"]).with_vocab(512), torch.device("cpu"),
                         writes=True)
    logger.validation(TrainState(iteration=0), None)
    assert capsys.readouterr().out == ""
    logger.validation(TrainState(iteration=5), 2.5)
    assert "validation loss at iteration 5 | lm loss value: 2.500000E+00" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["split_100_0_0_bf16", "eval_iters_0"])
def test_training_without_validation_set_runs_and_says_so_once(corpus, tmp_path, case):
    if case == "split_100_0_0_bf16":
        argv = ["--model-preset", "tiny", "--device", "cpu", "--bf16", "--train-iters", 10,
                "--tokenizer-type", "NullTokenizer", "--vocab-size", 500, "--data-path", corpus,
                "--split", "100,0,0", "--eval-interval", 5, "--eval-iters", 2]
    else:
        argv = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--train-iters", 10,
                "--eval-interval", 1000, "--eval-iters", 0]
    log = tmp_path / "log.jsonl"
    proc = run_pretrain(argv + ["--micro-batch-size", 1, "--global-batch-size", 2, "--log-interval", 1,
                                "--log-json", log])
    assert len(_notices(proc.stdout)) == 1, proc.stdout[-3000:]
    assert "validation loss" not in proc.stdout
    losses = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iteration"] for r in losses if "lm loss" in r] == list(range(1, 11))
