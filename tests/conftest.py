"""Makes the repository and tests/launch.py importable from every test folder, and sorts the tests into
tiers: `make test-fast` runs those that start no process (the edit-test loop, under two minutes on two
cores); `make test` runs everything (CI).

A test is marked `launches` when its function, or a fixture it uses, starts a process (torchrun, a tool, a
worker script): found by reading their source, and the module's helper functions they call, for the
launch helpers below. Nothing to remember when adding a test."""

import inspect
import re
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for path in (TESTS.parent, TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

LAUNCH = re.compile(r"\b(run_pretrain|start_pretrain|torchrun_cmd|run_tool|subprocess\.\w+|Popen)\(")


def pytest_configure(config):
    config.addinivalue_line("markers", "launches: starts processes (torchrun workers, tools); not in make test-fast")


def _source(func) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def _launching_names(module) -> set[str]:
    """Module-level functions that start a process, directly or through another such function."""
    cached = getattr(module, "__launching_names__", None)
    if cached is not None:
        return cached
    sources = {name: _source(obj) for name, obj in vars(module).items()
               if inspect.isfunction(obj) and obj.__module__ == module.__name__}
    launching = {name for name, src in sources.items() if LAUNCH.search(src)}
    while True:
        more = {name for name, src in sources.items() if name not in launching
                and any(re.search(rf"\b{re.escape(other)}\(", src) for other in launching)}
        if not more:
            break
        launching |= more
    module.__launching_names__ = launching
    return launching


def _launches(func, module) -> bool:
    src = _source(func)
    return bool(LAUNCH.search(src)) or any(re.search(rf"\b{re.escape(n)}\(", src) for n in _launching_names(module))


def pytest_collection_modifyitems(config, items):
    for item in items:
        funcs = [item.function] + [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(_launches(f, sys.modules.get(f.__module__, item.module)) for f in funcs):
            item.add_marker(pytest.mark.launches)
