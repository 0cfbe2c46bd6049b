"""Test helpers: launch pretrain_llama.py under torchrun on 127.0.0.1 (gloo) and read its log.

A plain module (not conftest.py), so tests in every folder import it unambiguously.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_cmd(nproc: int, script: str, *, nnodes: int = 1, node_rank: int = 0, port: int | None = None):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
            f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port or free_port()}",
            script]


def test_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("TRITON_INTERPRET", None)
    return env


def run_pretrain(args: list[str], nproc: int = 1, timeout: int = 600, check: bool = True, env: dict | None = None):
    """Run pretrain_llama.py; returns the CompletedProcess (stdout+stderr in .stdout)."""
    cmd = torchrun_cmd(nproc, str(REPO / "pretrain_llama.py")) + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=REPO, env={**test_env(), **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"pretrain_llama.py failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def read_log(path, key: str = "lm loss") -> dict[int, float]:
    """iteration -> logged scalar (training loss by default), from --log-json."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return {r["iteration"]: r[key] for r in records if key in r}


def read_losses(path) -> dict[int, float]:
    return read_log(path)


# The layout-parity model: tiny LLaMA, fp32, no warmup so every step moves the weights.
TINY_ARGS = ["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--log-interval", "1",
             "--micro-batch-size", "1", "--global-batch-size", "4", "--lr", "1e-2", "--lr-decay-style",
             "constant", "--seed", "1234"]
