"""What a save directory protects: a damaged shard is refused at load, naming the file; a failed save
(a full disk) removes its partial files and leaves the previous checkpoint the latest; a different
model's checkpoint is not replaced without --overwrite; a first launch with --save X --load X starts
from scratch. The lock that keeps two runs out of one --save: unit tests here, and the live refusal
in tests/training/test_stopping.py (a second run started while a run is saving)."""

import os
import resource
import shutil
import subprocess
import sys

import pytest
from launch import TINY_ARGS, start_pretrain

from megatron_ext.checkpoint import integrity, lock

BASE = TINY_ARGS + ["--train-iters", 3]
# Below one shard of the tiny model (~1.7 MB), above everything else a run writes.
FILE_SIZE_LIMIT = 600_000


def _launch(args, nproc=1, file_size_limit=None) -> subprocess.Popen:
    def limit():  # a full disk, as the writing process sees it (Python ignores SIGXFSZ: writes fail)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return start_pretrain(args, nproc=nproc, preexec_fn=limit if file_size_limit else None)


def _snapshot(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _corrupt_in_place(path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    base = root / "base"
    first = _launch(BASE + ["--save", base, "--load", base], nproc=2)  # a first launch: nothing to load yet
    out = {"first": first.communicate(timeout=600)[0]}
    assert first.returncode == 0, out["first"][-4000:]
    corrupt = _copy(base, root / "corrupt")
    _corrupt_in_place(sorted((corrupt / "iter_0000003").glob("*.distcp"))[0])
    other = _copy(base, root / "other-model")
    full = _copy(base, root / "full-disk")
    before = {name: _snapshot(root / name) for name in ("corrupt", "other-model", "full-disk")}
    procs = {
        "corrupt": _launch(BASE + ["--train-iters", 4, "--load", corrupt]),
        "other-model": _launch(BASE + ["--num-layers", 3, "--save", other]),
        "overwrite": _launch(BASE + ["--num-layers", 3, "--train-iters", 1, "--overwrite",
                                     "--save", _copy(base, root / "overwrite")]),
        "full-disk": _launch(BASE + ["--train-iters", 4, "--load", full, "--save", full], nproc=2,
                             file_size_limit=FILE_SIZE_LIMIT),
    }
    rc = {}
    for name, proc in procs.items():
        out[name] = proc.communicate(timeout=600)[0]
        rc[name] = proc.returncode
    return root, out, rc, before


def test_first_launch_with_the_same_save_and_load_starts_fresh(runs):
    root, out, _, _ = runs
    assert "no checkpoint in --load" in out["first"] and "starting from scratch" in out["first"]
    assert (root / "base" / "latest_checkpointed_iteration.txt").read_text() == "3"
    assert not (root / "base" / lock.LOCK_NAME).exists()  # released at exit


def test_a_shard_damaged_in_place_is_refused_naming_the_file(runs):
    root, out, rc, before = runs
    damaged = sorted((root / "corrupt" / "iter_0000003").glob("*.distcp"))[0]
    assert rc["corrupt"] != 0
    assert f"{damaged} does not match its checksum" in out["corrupt"], out["corrupt"][-3000:]
    assert _snapshot(root / "corrupt") == before["corrupt"]


def test_a_different_models_checkpoint_is_not_replaced(runs):
    root, out, rc, before = runs
    assert rc["other-model"] != 0
    assert "holds a checkpoint of a different model (its num_layers=4 but this run has 3)" in out["other-model"], \
        out["other-model"][-3000:]
    assert _snapshot(root / "other-model") == before["other-model"]
    assert rc["overwrite"] == 0, out["overwrite"][-3000:]
    assert (root / "overwrite" / "latest_checkpointed_iteration.txt").read_text() == "1"


def test_a_failed_save_leaves_no_partial_files_and_the_previous_checkpoint_latest(runs):
    root, out, rc, before = runs
    log = out["full-disk"]
    assert rc["full-disk"] != 0, log[-3000:]
    assert f"cannot save iteration 4 to {root / 'full-disk' / 'iter_0000004'}" in log, log[-3000:]
    assert "partial files were removed and the previous checkpoint is still the latest" in log
    assert _snapshot(root / "full-disk") == before["full-disk"]  # nothing added, nothing changed


# ---- the lock and the checksums, without launching a run -------------------------------------------

def test_lock_refuses_a_live_holder_and_takes_over_from_a_dead_one(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert lock._try_acquire(str(tmp_path)) is None
    refusal = lock._try_acquire(str(tmp_path))  # held by this (live) process
    assert refusal and f"pid {os.getpid()}" in refusal and "in use by another run" in refusal
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / lock.LOCK_NAME).write_text(
        f'{{"host": "{lock.socket.gethostname()}", "pid": {dead.pid}, "since": "earlier"}}')
    assert lock._try_acquire(str(tmp_path)) is None
    assert f'"pid": {os.getpid()}' in (tmp_path / lock.LOCK_NAME).read_text()


def test_lock_of_another_host_is_kept_unless_it_is_the_same_slurm_job(tmp_path, monkeypatch):
    (tmp_path / lock.LOCK_NAME).write_text('{"host": "node-17", "pid": 1, "slurm_job_id": "991", "since": "x"}')
    monkeypatch.setenv("SLURM_JOB_ID", "992")
    refusal = lock._try_acquire(str(tmp_path))
    assert refusal and "host node-17, pid 1" in refusal
    monkeypatch.setenv("SLURM_JOB_ID", "991")  # the same job, requeued onto another node
    assert lock._try_acquire(str(tmp_path)) is None


def test_checksums_catch_a_changed_or_missing_file(tmp_path):
    for name, data in (("a.distcp", b"x" * 5000), ("common.pt", b"y" * 10)):
        (tmp_path / name).write_bytes(data)
    integrity.write_checksums(str(tmp_path))
    assert integrity.verify_checksums(str(tmp_path)) is True
    _corrupt_in_place(tmp_path / "a.distcp")
    (tmp_path / "common.pt").unlink()
    with pytest.raises(integrity.IntegrityError) as err:
        integrity.verify_checksums(str(tmp_path))
    message = str(err.value)
    assert f"{tmp_path / 'a.distcp'} does not match" in message and f"{tmp_path / 'common.pt'} is missing" in message
    assert integrity.verify_checksums(str(tmp_path / "nonexistent")) is False


def test_export_refuses_a_damaged_shard(runs, tmp_path):
    from megatron_ext.checkpoint.convert import ConversionError, megatron_to_hf

    root, _, _, _ = runs
    damaged = sorted((root / "corrupt" / "iter_0000003").glob("*.distcp"))[0]
    with pytest.raises(ConversionError, match=f"{damaged} does not match its checksum"):
        megatron_to_hf(str(root / "corrupt"), str(tmp_path / "hf"), vocab_size=512, progress=False)
    assert not (tmp_path / "hf").exists()
