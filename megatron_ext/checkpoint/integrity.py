"""Per-file SHA-256 of a checkpoint, written at save and verified at load.

A shard damaged in place (same size: a bad disk, a copy gone wrong) otherwise loads without
complaint and trains to NaN. The sums are in `sha256sum` format, so `sha256sum -c checksums.sha256`
inside an iteration directory checks a copy by hand. Ranks hash disjoint shares of the files, so
the cost of a save or load grows with the largest share, not with the whole checkpoint.
"""

from __future__ import annotations

import hashlib
import os

import torch.distributed as dist

from megatron_ext.checkpoint.paths import write_text_atomic

CHECKSUM_FILE = "checksums.sha256"


class IntegrityError(ValueError):
    """A checkpoint file is missing or differs from the checksum written when it was saved."""


def _rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _gather(value) -> list:
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: str) -> None:
    """Collective (all ranks call it after the checkpoint's files are complete)."""
    rank, size = _rank_and_size()
    names = sorted(n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))
                   and n != CHECKSUM_FILE)
    sums = {}
    for share in _gather({n: sha256_file(os.path.join(directory, n)) for n in names[rank::size]}):
        sums.update(share)
    failure = None
    if rank == 0:
        try:
            write_text_atomic(os.path.join(directory, CHECKSUM_FILE), "".join(f"{sums[n]}  {n}\n" for n in names))
        except OSError as exc:
            failure = exc
    failures = _gather(failure)
    if failures[0] is not None:
        raise failures[0]


def read_checksums(directory: str) -> dict[str, str] | None:
    """name -> sha256, or None for a checkpoint written without them (before they existed)."""
    path = os.path.join(directory, CHECKSUM_FILE)
    if not os.path.isfile(path):
        return None
    sums = {}
    for line in open(path):
        digest, _, name = line.rstrip("\n").partition("  ")
        sums[name] = digest
    return sums


def verify_checksums(directory: str) -> bool:
    """Collective. Raises naming every damaged or missing file; False when there is nothing to verify."""
    sums = read_checksums(directory)
    if sums is None:
        return False
    rank, size = _rank_and_size()
    bad = []
    for name in sorted(sums)[rank::size]:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            bad.append(f"{path} is missing")
        elif sha256_file(path) != sums[name]:
            bad.append(f"{path} does not match its checksum (damaged since it was saved)")
    bad = [entry for share in _gather(bad) for entry in share]
    if bad:
        raise IntegrityError(f"checkpoint {directory} is damaged: {'; '.join(bad)}. Re-copy it, or load an earlier "
                             "iteration (edit latest_checkpointed_iteration.txt)")
    return True
