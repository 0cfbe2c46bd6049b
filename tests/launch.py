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


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("TRITON_INTERPRET", None)
    return env


def run_pretrain(args: list[str], nproc: int = 1, timeout: int = 600, check: bool = True, env: dict | None = None):
    """Run pretrain_llama.py; returns the CompletedProcess (stdout+stderr in .stdout)."""
    cmd = torchrun_cmd(nproc, str(REPO / "pretrain_llama.py")) + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"pretrain_llama.py failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def start_pretrain(args: list, nproc: int = 1, **popen_kwargs) -> subprocess.Popen:
    """Start pretrain_llama.py under torchrun without waiting: tests start their runs together (start-up,
    not compute, is what costs). Output (stdout+stderr) in .communicate()[0]."""
    cmd = torchrun_cmd(nproc, str(REPO / "pretrain_llama.py")) + [str(a) for a in args]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen_kwargs)


def wait_all(procs: dict, timeout: int = 600) -> dict[str, str]:
    """Wait for runs started with start_pretrain; each must exit 0. Returns name -> output."""
    outputs = {}
    for name, proc in procs.items():
        outputs[name] = proc.communicate(timeout=timeout)[0]
        assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{outputs[name][-5000:]}"
    return outputs


def stored_tensors(iteration_dir) -> dict:
    """Every tensor of a torch_dist checkpoint (model and optimizer state), whole, by key."""
    import torch
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(iteration_dir))
    state = {k: torch.empty(md.size, dtype=md.properties.dtype)
             for k, md in reader.read_metadata().state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    dcp.load(state, storage_reader=reader, no_dist=True)
    return state


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
