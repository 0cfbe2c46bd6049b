"""--overlap-param-gather defers the all-gather of the updated parameters to the next forward; a save
must not write the stale shards in between. DP2, distributed optimizer, bf16 (the GPU configuration):
the checkpoint exports bit-identical weights to the run without the flag, and resumes bit-exactly."""

import pytest
import torch
from launch import TINY_ARGS, read_losses, start_pretrain, wait_all
from safetensors.torch import load_file

from megatron_ext.checkpoint.convert import megatron_to_hf

SAVED_AT, TOTAL = 3, 5
DP2 = TINY_ARGS + ["--bf16", "--use-distributed-optimizer", "--overlap-grad-reduce"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    wait_all({
        "plain": start_pretrain(DP2 + ["--train-iters", SAVED_AT, "--save", root / "plain"], nproc=2),
        "overlap": start_pretrain(DP2 + ["--overlap-param-gather", "--train-iters", TOTAL, "--save",
                                         root / "overlap", "--save-interval", SAVED_AT, "--log-json",
                                         root / "overlap.jsonl"], nproc=2),
    })
    resume_from = root / "resume_from"
    (resume_from / f"iter_{SAVED_AT:07d}").parent.mkdir()
    (root / "overlap" / f"iter_{SAVED_AT:07d}").rename(resume_from / f"iter_{SAVED_AT:07d}")
    (resume_from / "latest_checkpointed_iteration.txt").write_text(str(SAVED_AT))
    wait_all({"resumed": start_pretrain(DP2 + ["--overlap-param-gather", "--train-iters", TOTAL, "--load",
                                               resume_from, "--log-json", root / "resumed.jsonl"], nproc=2)})
    return root


def test_saved_weights_equal_the_run_without_overlap(runs, tmp_path):
    exported = {}
    for name, ckpt in (("plain", runs / "plain"), ("overlap", runs / "resume_from")):
        megatron_to_hf(str(ckpt), str(tmp_path / name), progress=False)
        exported[name] = load_file(tmp_path / name / "model.safetensors")
    assert sorted(exported["plain"]) == sorted(exported["overlap"])
    stale = [k for k, v in exported["plain"].items() if not torch.equal(v, exported["overlap"][k])]
    assert not stale, f"{len(stale)} of {len(exported['plain'])} tensors differ: {stale[:5]}"


def test_resume_from_an_overlapped_save_is_exact(runs):
    uninterrupted, resumed = read_losses(runs / "overlap.jsonl"), read_losses(runs / "resumed.jsonl")
    assert sorted(resumed) == list(range(SAVED_AT + 1, TOTAL + 1))
    assert resumed == {it: uninterrupted[it] for it in resumed}
