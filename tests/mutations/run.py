"""Planted-bug harness: apply each mutation to a scratch copy of the repository and check that the tests
named for it fail.

    .venv/bin/python tests/mutations/run.py              # every mutation, on the committed tree (HEAD)
    .venv/bin/python tests/mutations/run.py fim_rate_ignored bf16_trains_fp32   # some of them
    .venv/bin/python tests/mutations/run.py --worktree   # on the working tree (uncommitted edits too)
    .venv/bin/python tests/mutations/run.py --list

A mutation is a file `tests/mutations/<name>.patch`: a unified diff against the repository root, preceded by a
header of `Key: value` lines (git apply skips everything before the first `diff --git`):

    Bug: what the planted bug does, in one line
    Select: tests/path/test_file.py::test_name      (one line per pytest node id or path; at least one)

The run:
1. exports the tree (`git archive HEAD`, or the working tree's tracked and unignored files) to a scratch
   directory that is never run in, and checks that `megatron_ext` imported there resolves to the copy, not to
   the editable install of the original tree (PYTHONPATH=<copy>, cwd=<copy>);
2. baseline: runs the union of all selections on an unmutated copy; they must pass, or a "caught" would mean
   nothing (skip with --no-baseline when you have just checked);
3. per mutation: a fresh copy, the patch applied with `git apply`, its selection run with `pytest -x`:
   "caught" when pytest fails, "SURVIVED" when it passes, "STALE" when the patch no longer applies (the code
   it mutates has changed: rewrite the patch).
Fresh copies and PYTHONDONTWRITEBYTECODE=1, so no byte code compiled from unmutated source is ever reused.
Exit status 0 only when every mutation was caught.

This file is not collected by pytest (its name does not match test_*.py); neither are the .patch files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass
class Mutation:
    name: str
    path: Path
    bug: str
    select: list[str]


def load_mutations() -> list[Mutation]:
    out = []
    for path in sorted(HERE.glob("*.patch")):
        bug, select = "", []
        for line in path.read_text().splitlines():
            if line.startswith("diff --git") or line.startswith("--- "):
                break
            key, _, value = line.partition(":")
            if key.strip() == "Bug":
                bug = value.strip()
            elif key.strip() == "Select" and value.strip():
                select.append(value.strip())
        if not select:
            raise SystemExit(f"{path}: no 'Select:' line (which tests must fail?)")
        out.append(Mutation(path.stem, path, bug, select))
    return out


def export_tree(dest: Path, worktree: bool) -> str:
    dest.mkdir(parents=True)
    if worktree:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = REPO / name
            if src.is_file():  # deleted-but-tracked files are skipped
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return "working tree"
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()
    return f"HEAD {head}"


def env_for(copy: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("TRITON_INTERPRET", None)  # tests/kernels/conftest.py sets it where needed
    return env


def check_shadowing(copy: Path) -> None:
    """megatron_ext and mup must import from the copy, not from the editable install of REPO."""
    code = ("import importlib.util as u; "
            "print(u.find_spec('megatron_ext').origin); print(u.find_spec('mup').origin)")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy), capture_output=True, text=True,
                         check=True).stdout.split()
    for origin in out:
        if not Path(origin).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"the scratch copy does not shadow the installed package: {origin} is outside {copy}")


def run_pytest(copy: Path, select: list[str], stop_first: bool, timeout: int) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"] + (["-x"] if stop_first else [])
    start = time.monotonic()
    # Own process group, so a timeout also ends the torchrun jobs a test started (a planted bug may hang one).
    proc = subprocess.Popen(cmd + select, cwd=copy, env=env_for(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.monotonic() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, (out or "") + f"\n(timed out after {timeout} s)", time.monotonic() - start


def apply_patch(copy: Path, patch: Path) -> str | None:
    proc = subprocess.run(["git", "apply", "--whitespace=nowarn", str(patch)], cwd=copy, capture_output=True,
                          text=True)
    return None if proc.returncode == 0 else proc.stderr.strip()


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines()[-lines:])


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:160]
    return output.strip().splitlines()[-1][:160] if output.strip() else "(no output)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--worktree", action="store_true", help="copy the working tree instead of HEAD")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selections")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--list", action="store_true", help="list the mutations and their selections")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = parser.parse_args(argv)

    mutations = load_mutations()
    if args.names:
        unknown = set(args.names) - {m.name for m in mutations}
        if unknown:
            raise SystemExit(f"unknown mutations {sorted(unknown)}; --list shows them")
        mutations = [m for m in mutations if m.name in args.names]
    if args.list:
        for m in mutations:
            print(f"{m.name}: {m.bug}\n    " + "\n    ".join(m.select))
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="mutations-"))
    start = time.monotonic()
    try:
        base = scratch / "base"
        source = export_tree(base, args.worktree)
        print(f"mutation run on {source}, scratch {scratch}, {len(mutations)} mutation(s)", flush=True)

        def fresh(name: str) -> Path:
            copy = scratch / name
            shutil.copytree(base, copy, symlinks=True)
            check_shadowing(copy)
            return copy

        if not args.no_baseline:
            union = list(dict.fromkeys(s for m in mutations for s in m.select))
            rc, out, secs = run_pytest(fresh("baseline"), union, stop_first=False, timeout=args.timeout * 2)
            if rc != 0:
                print(f"baseline: the selections fail WITHOUT any mutation ({secs:.0f} s); fix them first:")
                print(tail(out, 40))
                return 2
            print(f"baseline: all selections pass unmutated ({secs:.0f} s)", flush=True)

        results = {}
        for m in mutations:
            copy = fresh(m.name)
            error = apply_patch(copy, m.path)
            if error:
                results[m.name] = "STALE"
                print(f"STALE     {m.name}: patch does not apply\n{tail(error)}", flush=True)
                continue
            rc, out, secs = run_pytest(copy, m.select, stop_first=True, timeout=args.timeout)
            if rc == 0:
                results[m.name] = "SURVIVED"
                print(f"SURVIVED  {m.name} ({secs:.0f} s): {m.bug}\n{tail(out, 5)}", flush=True)
            elif rc in (1, -1):  # tests failed (or hung: a planted bug may deadlock a distributed run)
                results[m.name] = "caught"
                print(f"caught    {m.name} ({secs:.0f} s): {first_failure(out)}", flush=True)
            else:  # 2-5: interrupted, internal error, usage error, nothing collected
                results[m.name] = "ERROR"
                print(f"ERROR     {m.name}: pytest exit {rc}\n{tail(out)}", flush=True)
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
        caught = sum(r == "caught" for r in results.values())
        others = {r: [n for n, v in results.items() if v == r] for r in ("SURVIVED", "STALE", "ERROR")}
        detail = "".join(f"; {r.lower()}: {', '.join(n)}" for r, n in others.items() if n)
        print(f"mutations: {caught}/{len(results)} caught{detail} ({time.monotonic() - start:.0f} s)")
        return 0 if caught == len(results) else 1
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
