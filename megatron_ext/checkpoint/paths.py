"""Checkpoint directory layout: ROOT/iter_0000100/ and ROOT/latest_checkpointed_iteration.txt."""

from __future__ import annotations

import os

LATEST_FILE = "latest_checkpointed_iteration.txt"


class CheckpointError(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def existing_iteration_dir(root: str, iteration: int) -> str:
    """ITER, or ITER.old when a crash hit a re-save of the same iteration between its two renames
    (ITER moved aside, the new one not yet in place): the previous save is then still complete."""
    path = iteration_dir(root, iteration)
    if not os.path.isdir(path) and os.path.isdir(path + ".old"):
        return path + ".old"
    return path


def has_checkpoint(root: str) -> bool:
    """False for a directory that does not exist yet or holds no checkpoint (a first launch with the
    same --save and --load); a directory with iteration folders but no latest file is damaged, not empty."""
    if not os.path.isdir(root):
        return False
    return any(name == LATEST_FILE or name.startswith("iter_") for name in os.listdir(root))


def read_latest_iteration(root: str) -> int:
    path = os.path.join(root, LATEST_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"--load {root}: no {LATEST_FILE} there; is this a checkpoint directory "
                              "written by pretrain_llama.py --save?")
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path} holds {text!r}, not an iteration number; restore it or pass another --load")
    return int(text)


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
