"""One run per --save directory: two runs saving into the same directory would replace each other's
checkpoints (and delete each other's half-written ones).

Global rank 0 holds ROOT/.save.lock (host, pid, Slurm job) for the life of the run. A lock left by
a process that is gone (same host, pid no longer running), or by an earlier allocation of the same
Slurm job (a requeue), is taken over; any other holder makes the new run stop before it writes.
"""

from __future__ import annotations

import json
import os
import socket
import time

import torch.distributed as dist

from megatron_ext.checkpoint.paths import CheckpointError

LOCK_NAME = ".save.lock"


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, under another user
        return True
    return True


def _is_stale(holder: dict, me: dict) -> bool:
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return True  # the same job, requeued: its earlier processes are gone
    return holder.get("host") == me["host"] and not _pid_running(int(holder.get("pid", -1)))


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # being written, or damaged: treated as held by an unknown process


def _try_acquire(root: str) -> str | None:
    """Take the lock; returns why not, or None."""
    os.makedirs(root, exist_ok=True)
    path, me = os.path.join(root, LOCK_NAME), _holder()
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if not holder or not _is_stale(holder, me):
                who = (f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"
                       if holder else "an unknown process")
                return (f"--save {root} is in use by another run ({who}): two runs saving there would "
                        f"overwrite each other's checkpoints. Wait for it to finish or pass another --save; if "
                        f"that run is gone, delete {path}")
            print(f" > taking over {path} from a run that is gone (host {holder.get('host')}, pid "
                  f"{holder.get('pid')})", flush=True)
            os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return f"could not lock --save {root}: another run took {path} at the same moment"


class SaveLock:
    """Held from start-up to exit; every rank raises the same error when rank 0 cannot take it."""

    def __init__(self, root: str | None):
        self.path = os.path.join(root, LOCK_NAME) if root else None
        self.held = False
        if not root:
            return
        self.created_root = not os.path.exists(root)
        refusal = [_try_acquire(root) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(refusal, src=0)
        if refusal[0]:
            raise CheckpointError(refusal[0])
        self.held = dist.get_rank() == 0

    def release(self) -> None:
        if self.held and _read(self.path).get("pid") == os.getpid():
            os.remove(self.path)
            root = os.path.dirname(self.path)
            if self.created_root and not os.listdir(root):
                os.rmdir(root)  # a run that failed before its first save leaves nothing behind
        self.held = False
