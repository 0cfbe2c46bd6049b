"""Bad input stops at start-up with a message that names the problem and the fix, writing nothing."""

import sys
import types

import pytest
import torch
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
    (["--attention-backend", "flash", "--bf16"], 1, "--attention-backend flash (--use-flash-attn) needs a CUDA device"),
    (["--use-flash-attn", "--bf16"], 1, "--attention-backend flash (--use-flash-attn) needs a CUDA device"),
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
    model = args.model_identity
    assert (model.num_layers, model.hidden_size, model.ffn_hidden_size) == (2, 32, 176)


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
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 2, "--tensor-model-parallel-size", 2, "--hidden-size", 48,
                                     "--num-attention-heads", 3, "--save", save], nproc=2, check=False)
    assert proc.returncode != 0
    assert "--num-attention-heads 3 is not divisible by --tensor-model-parallel-size 2" in proc.stdout
    assert not save.exists()


def test_apex_norms_without_apex_are_named(tmp_path):
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 1, "--norm-impl", "apex"], check=False)
    assert proc.returncode != 0
    assert "--norm-impl apex needs NVIDIA apex" in proc.stdout


FLASH_ON_GPU = ["--model-preset", "tiny", "--mock-data", "--device", "auto", "--train-iters", "2",
                "--attention-backend", "flash"]


def test_flash_attention_without_flash_attn_is_named(monkeypatch):
    """On a CUDA machine without an importable flash-attn: refused at parse time, naming flag and fix."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `from flash_attn import ...` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        parse_args(FLASH_ON_GPU + ["--bf16"])
    message = str(exit_info.value)
    assert "--attention-backend flash (--use-flash-attn) needs the flash-attn package" in message
    assert "pip install flash-attn" in message and "--attention-backend sdpa" in message


def test_flash_attention_in_fp32_is_named(monkeypatch):
    """flash-attn has no fp32 kernels: refused instead of silently running SDPA; with --bf16 accepted."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=lambda *a, **k: None))
    with pytest.raises(SystemExit, match="needs --bf16 or --fp16"):
        parse_args(FLASH_ON_GPU)
    assert parse_args(FLASH_ON_GPU + ["--bf16"]).attention_backend == "flash"


def test_flash_attention_on_cpu_fails_fast_and_writes_nothing(tmp_path):
    save = tmp_path / "ckpt"
    proc = run_pretrain(TINY_ARGS + ["--train-iters", 1, "--bf16", "--attention-backend", "flash", "--save", save],
                        check=False)
    assert proc.returncode != 0
    assert "--attention-backend flash (--use-flash-attn) needs a CUDA device" in proc.stdout
    assert "--attention-backend sdpa" in proc.stdout
    # Refused at start-up: no model was built, and the attention layer's own guard never ran.
    assert "parameters on the last rank" not in proc.stdout and "needs flash-attn installed" not in proc.stdout
    assert not save.exists()
