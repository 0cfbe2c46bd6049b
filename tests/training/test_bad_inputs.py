"""Bad input stops at start-up with a message that names the problem and the fix, writing nothing."""

import pytest
from launch import TINY_ARGS, run_pretrain

from megatron_ext.arguments import parse_args

BASE = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--train-iters", "2"]


@pytest.mark.parametrize("argv,world_size,message", [
    (["--tensor-model-parallel-size", "3"], 3, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
    (["--pipeline-model-parallel-size", "3"], 3, "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3"),
    (["--tensor-model-parallel-size", "2"], 3, "world size 3 is not divisible by TP x PP"),
    (["--global-batch-size", "6", "--micro-batch-size", "4"], 1, "--global-batch-size 6 is not divisible"),
    (["--group-query-attention", "--num-query-groups", "3"], 1, "--num-query-groups 3 must divide"),
    (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "3"], 2,
     "--num-layers-per-virtual-pipeline-stage 3"),
    (["--bf16", "--fp16"], 1, "--bf16 and --fp16 are exclusive"),
    (["--rotary-percent", "0.3"], 1, "--rotary-percent 0.3"),
    (["--save-interval", "5"], 1, "--save-interval needs --save"),
    (["--use-mup"], 1, "--use-mup needs --mup-base-hidden-size"),
])
def test_impossible_configuration_is_named(argv, world_size, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(BASE + argv, world_size=world_size)
    assert message in str(exit_info.value)


def test_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--tensor-parallel-size", "2"])
    assert "unrecognized arguments: --tensor-parallel-size" in capsys.readouterr().err


def test_no_data_is_named():
    with pytest.raises(SystemExit, match="--data-path"):
        parse_args(["--model-preset", "tiny", "--train-iters", "2", "--tokenizer-type", "NullTokenizer"])


def test_preset_values_are_overridden_by_flags():
    args = parse_args(BASE + ["--num-layers", "2", "--hidden-size", "32"])
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size) == (2, 32, 176)


def test_missing_data_path_fails_fast_and_writes_nothing(tmp_path):
    save = tmp_path / "ckpt"
    proc = run_pretrain(["--model-preset", "tiny", "--device", "cpu", "--train-iters", "2",
                         "--tokenizer-type", "NullTokenizer", "--vocab-size", "500",
                         "--data-path", tmp_path / "nowhere" / "corpus_text_document", "--save", save],
                        check=False)
    assert proc.returncode != 0
    assert "nowhere/corpus_text_document" in proc.stdout and "preprocess_data.py" in proc.stdout
    assert not save.exists()


def test_impossible_layout_under_torchrun_writes_nothing(tmp_path):
    save = tmp_path / "ckpt"
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 2, "--tensor-model-parallel-size", 2,
                                     "--num-attention-heads", 3, "--save", save], nproc=2, check=False)
    assert proc.returncode != 0
    assert "--num-attention-heads 3 is not divisible by --tensor-model-parallel-size 2" in proc.stdout
    assert not save.exists()


def test_apex_norms_without_apex_are_named(tmp_path):
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 1, "--norm-impl", "apex"], check=False)
    assert proc.returncode != 0
    assert "--norm-impl apex needs NVIDIA apex" in proc.stdout
