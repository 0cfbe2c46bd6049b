"""Stopping early without losing work: SIGTERM (to torchrun, which forwards it, or to the workers and
their data-loader processes, as Slurm's scancel and preemption do) with --exit-signal-handler, --exit-interval and --exit-duration-in-mins save the last
complete iteration and exit 0, and the run resumes as if it had never stopped; a NaN run stops with
an error naming the iteration and never saves a non-finite model."""

import json
import signal
import subprocess
import time

import psutil
import pytest
import torch
from launch import TINY_ARGS, read_losses, start_pretrain, stored_tensors

# Long enough that a signal always lands mid-run; the schedule is constant, so the run's length
# changes nothing else. DataLoader workers too: Slurm signals them as well.
LONG = TINY_ARGS + ["--train-iters", 3000, "--exit-signal-handler", "--num-workers", 1]
TARGETS = ("torchrun", "workers")


def _launch(args, log) -> subprocess.Popen:
    return start_pretrain(args + ["--log-json", log], nproc=2, start_new_session=True)


def _logged_iterations(log) -> int:
    try:
        return len(log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _wait_for_iterations(proc, log, iterations: int = 3) -> None:
    deadline = time.monotonic() + 300
    while _logged_iterations(log) < iterations:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-4000:]
        time.sleep(0.05)


def _signal(proc, target: str) -> None:
    if target == "torchrun":
        proc.send_signal(signal.SIGTERM)
    else:  # as Slurm signals a job's tasks: the workers and their data-loader processes
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.send_signal(signal.SIGTERM)


def _latest(ckpt) -> int:
    return int((ckpt / "latest_checkpointed_iteration.txt").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stopping")
    procs, out = {}, {}
    for target in TARGETS:
        procs[target] = _launch(LONG + ["--save", root / target, "--save-interval", 2], root / f"{target}.jsonl")
    procs["nan"] = _launch(TINY_ARGS + ["--bf16", "--lr", "1e10", "--train-iters", 20, "--save", root / "nan",
                                        "--save-interval", 1], root / "nan.jsonl")
    for target in TARGETS:
        _wait_for_iterations(procs[target], root / f"{target}.jsonl")
    # A second run saving into the directory of one in progress must refuse before writing anything.
    intruder = _launch(TINY_ARGS + ["--train-iters", 2, "--seed", 7, "--save", root / "workers"],
                       root / "intruder.jsonl")
    out["intruder"] = intruder.communicate(timeout=600)[0]
    out["intruder:rc"] = intruder.returncode
    for target in TARGETS:
        _signal(procs[target], target)
    for name, proc in procs.items():
        out[name] = proc.communicate(timeout=600)[0]
        out[name + ":rc"] = proc.returncode
    # Resume both to a common iteration; the uninterrupted reference stops there by --exit-interval.
    stop = max(_latest(root / t) for t in TARGETS) + 2
    later = {f"{t}-resumed": _launch(LONG + ["--load", root / t, "--exit-interval", stop], root / f"{t}-resumed.jsonl")
             for t in TARGETS}
    later["reference"] = _launch(LONG + ["--exit-interval", stop, "--save", root / "reference"],
                                 root / "reference.jsonl")
    later["duration"] = _launch(TINY_ARGS + ["--train-iters", 3000, "--exit-duration-in-mins", 0.0001,
                                             "--save", root / "duration"], root / "duration.jsonl")
    for name, proc in later.items():
        out[name] = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{name}:\n{out[name][-4000:]}"
    return root, out, stop


@pytest.mark.parametrize("target", TARGETS)
def test_sigterm_saves_the_last_complete_iteration(runs, target):
    root, out, _ = runs
    logged = read_losses(root / f"{target}.jsonl")
    saved = _latest(root / target)
    assert saved == max(logged) and 3 <= saved < 3000, (saved, sorted(logged)[-3:])
    assert f"stopping at iteration {saved}/3000: received SIGTERM" in out[target], out[target][-3000:]
    if target == "workers":  # torchrun itself only sees its workers exit 0
        assert out[target + ":rc"] == 0 and "Traceback" not in out[target], out[target][-3000:]
    else:  # torch's launcher forwards SIGTERM, waits for its workers, then re-raises the signal itself
        tracebacks = out[target].count("Traceback")
        assert tracebacks == 1 and out[target].count("SignalException: Process") == 1, out[target][-3000:]
        assert "ChildFailedError" not in out[target]


def test_a_second_run_into_the_same_save_refuses(runs):
    """The first run (the 'workers' one) saved throughout; its checkpoints resuming exactly is checked
    by test_resume_after_sigterm_equals_the_uninterrupted_run."""
    root, out, _ = runs
    assert out["intruder:rc"] != 0 and not (root / "intruder.jsonl").exists()
    assert f"--save {root / 'workers'} is in use by another run (host " in out["intruder"], out["intruder"][-3000:]


@pytest.mark.parametrize("target", TARGETS)
def test_resume_after_sigterm_equals_the_uninterrupted_run(runs, target):
    root, _, stop = runs
    reference = read_losses(root / "reference.jsonl")
    resumed = read_losses(root / f"{target}-resumed.jsonl")
    assert sorted(resumed) == list(range(_latest(root / target) + 1, stop + 1))
    assert resumed == {it: reference[it] for it in resumed}


def test_exit_interval_saves_and_exits_zero(runs):
    root, out, stop = runs
    assert _latest(root / "reference") == stop and max(read_losses(root / "reference.jsonl")) == stop
    assert f"stopping at iteration {stop}/3000: --exit-interval {stop}" in out["reference"]


def test_exit_duration_saves_and_exits_zero(runs):
    root, out, _ = runs
    assert _latest(root / "duration") == 1 and "--exit-duration-in-mins 0.0001" in out["duration"]


def test_nan_stops_naming_the_iteration_and_keeps_the_last_finite_checkpoint(runs):
    root, out, _ = runs
    log, rc = out["nan"], out["nan:rc"]
    assert rc != 0, log[-3000:]
    records = [json.loads(line) for line in (root / "nan.jsonl").read_text().splitlines()]
    bad = next(r["iteration"] for r in records
               if not all(torch.isfinite(torch.tensor(float(r[k]))) for k in ("lm loss", "grad norm") if k in r))
    assert f"error: iteration {bad}: " in log and "is not finite" in log, log[-3000:]
    latest = _latest(root / "nan")
    assert latest == bad - 1, (latest, bad)
    for name, tensor in stored_tensors(root / "nan" / f"iter_{latest:07d}").items():
        assert torch.isfinite(tensor).all(), name
    assert not (root / "nan" / f"iter_{bad:07d}").exists()
