"""Save, resume and reshard: a resumed run continues exactly as the uninterrupted one; a checkpoint
saved at TP2 resumes at PP2; damaged or mismatched checkpoints fail clearly and change nothing."""

import os
import shutil
import subprocess

import pytest
import torch
from launch import REPO, read_log, read_losses, run_pretrain, stored_tensors, torchrun_cmd
from launch import TINY_ARGS as LAYOUT_ARGS
from launch import subprocess_env as launch_env

TOTAL, SAVED_AT = 6, 3
# Warm-up then cosine decay across the save, so a resume must restore the scheduler's position too.
TINY_ARGS = LAYOUT_ARGS + ["--lr-warmup-iters", 2, "--lr-decay-style", "cosine", "--min-lr", 1e-3]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A TP2 run of TOTAL iterations that also saves at SAVED_AT (saving does not perturb training)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    log = root / "log.jsonl"
    run_pretrain(TINY_ARGS + ["--train-iters", TOTAL, "--tensor-model-parallel-size", 2, "--save", root / "ckpt",
                              "--save-interval", SAVED_AT, "--log-json", log], nproc=2)
    return root / "ckpt", read_losses(log)


def checkpoint_at(uninterrupted, tmp_path):
    """A copy of the iteration-SAVED_AT checkpoint, as if the run had stopped there."""
    ckpt, _ = uninterrupted
    copy = tmp_path / "resume_from"
    shutil.copytree(ckpt / f"iter_{SAVED_AT:07d}", copy / f"iter_{SAVED_AT:07d}")
    (copy / "latest_checkpointed_iteration.txt").write_text(str(SAVED_AT))
    return copy


def test_checkpoint_layout_on_disk(uninterrupted):
    """What a checkpoint holds: its iteration, consumed samples and flags; every file under its checksum;
    the whole model and Adam state, finite, and moved by training between the two saves."""
    from megatron_ext.checkpoint.integrity import verify_checksums

    ckpt, _ = uninterrupted
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(TOTAL)
    stored = {}
    for iteration in (SAVED_AT, TOTAL):
        directory = ckpt / f"iter_{iteration:07d}"
        files = os.listdir(directory)
        assert "metadata.json" in files and "common.pt" in files
        assert any(name.endswith(".distcp") for name in files)
        assert verify_checksums(str(directory)) is True
        common = torch.load(directory / "common.pt", map_location="cpu", weights_only=True)
        assert common["iteration"] == iteration and common["consumed_samples"] == iteration * 4  # global batch 4
        assert common["args"]["tensor_model_parallel_size"] == 2 and common["model_identity"]["num_layers"] == 4
        assert common["opt_param_scheduler"]["num_steps"] == iteration * 4, common["opt_param_scheduler"]
        stored[iteration] = stored_tensors(directory)
    names = sorted(stored[TOTAL])
    assert names == sorted(stored[SAVED_AT])
    weights = [n for n in names if not n.startswith("optimizer.")]
    assert {f"optimizer.state.{kind}.{n}" for n in weights for kind in ("exp_avg", "exp_avg_sq")} <= set(names)
    for name in names:
        assert torch.isfinite(stored[TOTAL][name]).all(), name
    assert all(not torch.equal(stored[SAVED_AT][n], stored[TOTAL][n]) for n in weights)
    assert not [name for name in os.listdir(ckpt) if name.endswith(".tmp")]


@pytest.mark.parametrize("layout", [["--tensor-model-parallel-size", 2], ["--pipeline-model-parallel-size", 2]],
                         ids=["same-layout-tp2", "resharded-to-pp2"])
def test_resume_continues_the_uninterrupted_run(layout, uninterrupted, tmp_path):
    _, expected = uninterrupted
    log = tmp_path / "log.jsonl"
    proc = run_pretrain(TINY_ARGS + ["--train-iters", TOTAL, "--load", checkpoint_at(uninterrupted, tmp_path),
                                     "--log-json", log] + layout, nproc=2)
    resumed = read_losses(log)
    assert sorted(resumed) == list(range(SAVED_AT + 1, TOTAL + 1)), proc.stdout[-3000:]
    # The schedule continues where it was: the same (decaying) learning rate at every step.
    ckpt, _ = uninterrupted
    expected_lr = read_log(ckpt.parent / "log.jsonl", "learning-rate")
    resumed_lr = read_log(log, "learning-rate")
    assert resumed_lr == {it: expected_lr[it] for it in resumed_lr}
    assert len(set(resumed_lr.values())) == len(resumed_lr)  # it does move
    same_layout = "--tensor-model-parallel-size" in layout
    for it, loss in resumed.items():
        if same_layout:  # bit-for-bit the same computation
            assert loss == expected[it], f"iteration {it}: resumed {loss} vs uninterrupted {expected[it]}"
        else:
            assert loss == pytest.approx(expected[it], rel=1e-5), f"iteration {it}"


def _snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_vocabulary_mismatch_fails_clearly(uninterrupted, tmp_path):
    """The checkpoint was trained with a 512-token vocabulary; resuming it with a real SentencePiece
    tokenizer of 1000 pieces (padded to 1024) must stop before anything is written."""
    from megatron_ext.data.tokenizers import train_sentencepiece

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join((REPO / "data/corpus/english.jsonl").read_text().splitlines()[:40]) + "\n")
    tokenizer = train_sentencepiece([str(docs)], str(tmp_path / "tok"), vocab_size=1000)
    ckpt = checkpoint_at(uninterrupted, tmp_path)
    before = _snapshot(ckpt)
    proc = run_pretrain(TINY_ARGS + ["--train-iters", TOTAL, "--load", ckpt, "--save", ckpt,
                                     "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
                                     "--tensor-model-parallel-size", 2], nproc=2, check=False)
    assert proc.returncode != 0
    assert "padded_vocab_size=512" in proc.stdout and "1024" in proc.stdout
    assert "padded_vocab_size=512" in proc.stdout and "tokenizer" in proc.stdout
    assert _snapshot(ckpt) == before


@pytest.mark.parametrize("verify", [True, False], ids=["checksums", "no-verify-checkpoint"])
def test_truncated_checkpoint_fails_clearly(uninterrupted, tmp_path, verify):
    """With checksums the damaged shard is named before anything is read; without them (older
    checkpoints, or --no-verify-checkpoint) the reader still fails clearly."""
    ckpt = checkpoint_at(uninterrupted, tmp_path)
    shard = next((ckpt / f"iter_{SAVED_AT:07d}").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    before = _snapshot(ckpt)
    proc = run_pretrain(TINY_ARGS + ["--train-iters", TOTAL, "--load", ckpt, "--save", ckpt,
                                     "--tensor-model-parallel-size", 2] + ([] if verify else ["--no-verify-checkpoint"]),
                        nproc=2, check=False)
    assert proc.returncode != 0
    if verify:
        assert f"{shard} does not match its checksum" in proc.stdout, proc.stdout[-3000:]
    else:
        assert "cannot load checkpoint" in proc.stdout and "truncated" in proc.stdout, proc.stdout[-3000:]
    assert _snapshot(ckpt) == before


def _resume_and_compare(ckpt, expected, tmp_path, save: bool = False, model_flags: bool = True, extra=()):
    """Resume from ckpt at TP2 up to TOTAL; the losses must be the uninterrupted run's, bit for bit.
    Without model_flags the model's shape comes from the checkpoint alone (no --model-preset)."""
    log = tmp_path / "resumed.jsonl"
    args = TINY_ARGS if model_flags else [a for a in TINY_ARGS if a not in ("--model-preset", "tiny")]
    run_pretrain(args + ["--train-iters", TOTAL, "--load", ckpt, "--tensor-model-parallel-size", 2,
                         "--log-json", log] + (["--save", ckpt] if save else []) + list(extra), nproc=2)
    resumed = read_losses(log)
    assert sorted(resumed) == list(range(SAVED_AT + 1, TOTAL + 1))
    assert resumed == {it: expected[it] for it in resumed}


def _stored_dtypes(iteration_dir) -> dict:
    """Tensor key -> dtype, as a torch_dist checkpoint's metadata records them."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(iteration_dir)).read_metadata().state_dict_metadata
    return {k: md.properties.dtype for k, md in metadata.items() if isinstance(md, TensorStorageMetadata)}


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    """The process is killed while writing its second checkpoint (tests/checkpoint/crash_during_save.py):
    the first stays the latest, nothing of the second is taken for a checkpoint, and resuming from
    what is on disk continues the crashed run exactly. In bf16 with the plain (not distributed)
    optimizer: the checkpoint holds bf16 weights and the optimizer's fp32 main copy, and the resume is
    bit-exact only if that copy is restored (re-deriving it from the bf16 weights loses its low bits).
    The crashed run's own log is the uninterrupted reference: it logs iteration TOTAL before the save
    that kills it (saving does not perturb training: test_resume_continues_the_uninterrupted_run)."""
    ckpt = tmp_path / "ckpt"
    cmd = torchrun_cmd(2, str(REPO / "tests/checkpoint/crash_during_save.py")) + [str(a) for a in TINY_ARGS + [
        "--train-iters", TOTAL, "--tensor-model-parallel-size", 2, "--save", ckpt, "--save-interval", SAVED_AT,
        "--bf16", "--log-json", tmp_path / "crashed.jsonl"]]
    with open(tmp_path / "crash.log", "w") as out:  # a file, not a pipe: nothing can hold it open
        proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), stdout=out, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode != 0, "the simulated crash did not happen"
    expected = read_losses(tmp_path / "crashed.jsonl")
    assert sorted(expected) == list(range(1, TOTAL + 1)), (tmp_path / "crash.log").read_text()[-3000:]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(SAVED_AT)
    assert not (ckpt / f"iter_{TOTAL:07d}").exists()
    assert (ckpt / f"iter_{TOTAL:07d}.tmp").exists()  # the crashed save's partial files, never renamed
    dtypes = _stored_dtypes(ckpt / f"iter_{SAVED_AT:07d}")
    weights = {k: d for k, d in dtypes.items() if not k.startswith("optimizer.") and k.endswith(".weight")}
    assert weights and set(weights.values()) == {torch.bfloat16}, weights
    main_params = {k.removeprefix("optimizer.state.fp32_param."): d for k, d in dtypes.items()
                   if k.startswith("optimizer.state.fp32_param.")}
    assert sorted(main_params) == sorted(weights) and set(main_params.values()) == {torch.float32}, main_params
    _resume_and_compare(ckpt, expected, tmp_path, save=True, extra=["--bf16"])
    # The resumed run's own save of that iteration replaced the leftovers with a complete checkpoint.
    assert not (ckpt / f"iter_{TOTAL:07d}.tmp").exists()
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(TOTAL)


def test_crash_between_renames_of_a_resave_keeps_previous_checkpoint(uninterrupted, tmp_path):
    """Re-saving an existing iteration moves the old directory aside before renaming the new one in;
    a crash between the two renames leaves ITER.old and no ITER. Loading must still find it."""
    _, expected = uninterrupted
    ckpt = checkpoint_at(uninterrupted, tmp_path)
    (ckpt / f"iter_{SAVED_AT:07d}").rename(ckpt / f"iter_{SAVED_AT:07d}.old")
    (ckpt / f"iter_{SAVED_AT:07d}.tmp").mkdir()  # the new save's directory, not complete
    _resume_and_compare(ckpt, expected, tmp_path, model_flags=False)


def test_truncated_common_file_fails_clearly(uninterrupted, tmp_path):
    ckpt = checkpoint_at(uninterrupted, tmp_path)
    common = ckpt / f"iter_{SAVED_AT:07d}" / "common.pt"
    common.write_bytes(common.read_bytes()[: common.stat().st_size // 3])
    before = _snapshot(ckpt)
    proc = run_pretrain(TINY_ARGS + ["--train-iters", TOTAL, "--load", ckpt, "--save", ckpt,
                                     "--tensor-model-parallel-size", 2], nproc=2, check=False)
    assert proc.returncode != 0
    assert f"cannot read checkpoint {ckpt / f'iter_{SAVED_AT:07d}'}" in proc.stdout and "truncated" in proc.stdout
    assert "Traceback" not in proc.stdout.split("cannot read checkpoint")[0][-2000:]
    assert _snapshot(ckpt) == before


@pytest.fixture(scope="module")
def distributed_optimizer_run(tmp_path_factory):
    """DP2 with the distributed optimizer, μP Crystal-shaped model (its multipliers must not apply twice
    after a resume), saving at SAVED_AT."""
    root = tmp_path_factory.mktemp("distopt")
    log = root / "log.jsonl"
    run_pretrain(TINY_ARGS + ["--model-preset", "tiny-crystal", "--train-iters", TOTAL, "--use-distributed-optimizer",
                              "--save", root / "ckpt", "--save-interval", SAVED_AT, "--log-json", log], nproc=2)
    return root / "ckpt", read_losses(log)


@pytest.mark.parametrize("layout", [[], ["--tensor-model-parallel-size", 2]], ids=["same-layout-dp2", "resharded-to-tp2"])
def test_distributed_optimizer_resume(layout, distributed_optimizer_run, tmp_path):
    _, expected = distributed_optimizer_run
    log = tmp_path / "log.jsonl"
    run_pretrain(TINY_ARGS + ["--model-preset", "tiny-crystal", "--train-iters", TOTAL, "--use-distributed-optimizer",
                              "--load", checkpoint_at(distributed_optimizer_run, tmp_path), "--log-json", log] + layout,
                 nproc=2)
    resumed = read_losses(log)
    assert sorted(resumed) == list(range(SAVED_AT + 1, TOTAL + 1))
    for it, loss in resumed.items():
        if not layout:
            assert loss == expected[it], f"iteration {it}: resumed {loss} vs uninterrupted {expected[it]}"
        else:
            assert loss == pytest.approx(expected[it], rel=1e-5), f"iteration {it}"
