"""The run says what it did: every flag has help text and --help shows the defaults; the demo picks its own
port; "split has no documents" is said once (rank 0), not once per rank; a load names its parts.
(The loaded-checkpoint and final-validation lines in a real run: tests/training/test_megatron_lm_launch.py.)"""

import logging
import socket
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
from launch import REPO

from megatron_ext.arguments import build_parser


def test_every_flag_has_help_text():
    missing = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and not a.help]
    assert not missing, f"flags without help text: {missing}"


def test_help_shows_the_defaults():
    text = " ".join(build_parser().format_help().split(" options: ", 1)[-1].split())
    text = text[text.index("options:"):]
    for flag, default in (("--micro-batch-size MICRO_BATCH_SIZE", "1"), ("--lr LR", "0.0003"),
                          ("--min-lr MIN_LR", "0.0"), ("--split SPLIT", "969,30,1"),
                          ("--tokenizer-type", "SentencePieceTokenizer"), ("--log-interval LOG_INTERVAL", "10")):
        after = text[text.index(f"{flag} "):][:400]
        assert f"(default: {default})" in after, (flag, after)


def test_demo_picks_a_free_port_by_itself(tmp_path):
    out = tmp_path / "demo_out"
    for path in ("tokenizer/demo.model", "data/english_text_document.idx", "data/code_text_document.idx"):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text("")
    fake = tmp_path / "python"  # runs `python -c` for real, records the torchrun command instead of training
    fake.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\necho "ARGS: $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 29517))  # the port the demo used to hard-code
        proc = subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], cwd=REPO, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "OUT": str(out)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert proc.returncode == 0, proc.stdout
    args = next(line for line in proc.stdout.splitlines() if line.startswith("ARGS:")).split()
    port = int(args[args.index("--master-port") + 1])
    assert port != 29517 and f"rendezvous port {port}" in proc.stdout


@pytest.mark.parametrize("rank, said", [(0, True), (1, False)])
def test_split_with_no_documents_is_said_once_not_per_rank(rank, said, monkeypatch, caplog, tmp_path):
    import torch.distributed as dist

    from megatron_ext import megatron_compat

    class FakeIndex:  # 30 documents: "969,30,1" gives the test split none
        def __init__(self, prefix):
            pass

        def __len__(self):
            return 30

    monkeypatch.setattr("megatron.core.datasets.indexed_dataset.IndexedDataset", FakeIndex)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    config = SimpleNamespace(split="969,30,1", split_matrix=[(0, 0.969), (0.969, 0.999), (0.999, 1.0)])
    with caplog.at_level(logging.WARNING):
        megatron_compat.drop_empty_splits(config, [str(tmp_path / "a")], (10, 2, 0))
    assert config.split_matrix[2] is None  # dropped on every rank
    assert ("test split has no documents" in caplog.text) == said, caplog.text


def test_load_line_names_the_parts():
    from megatron_ext.checkpoint.dist import describe_load

    args = SimpleNamespace(finetune=False, no_load_rng=False, no_load_optim=False)
    line = describe_load("ck/iter_0000002", 2, 8, args, weights_only=False, with_optimizer=True, with_rng=True)
    assert line == (" > loaded checkpoint ck/iter_0000002 (iteration 2): weights, optimizer and LR schedule, "
                    "RNG, data position (8 consumed samples)")
    args.finetune = True
    line = describe_load("ck/iter_0000002", 2, 0, args, weights_only=True, with_optimizer=False, with_rng=False)
    assert line.endswith("(iteration 2): weights; not loaded: optimizer and LR schedule (--finetune), RNG "
                         "(--finetune), data position (--finetune: restarts at iteration 0)"), line
