"""Weight and bias gradients are deterministic by construction: each backward kernel writes per-program
fp32 partial rows that are summed in a fixed order, never accumulated with atomics (whose order, and so
whose rounding, changes run to run on a GPU). The interpreter runs programs one after another, so a
run-twice test alone cannot see an atomic; this checks the construction itself
(the run-twice tests sit next to each kernel's other tests)."""

import inspect
import re

import pytest

from megatron_ext.kernels import layer_norm, rms_norm, rotary, swiglu


@pytest.mark.parametrize("module", [rms_norm, layer_norm, rotary, swiglu], ids=lambda m: m.__name__.split(".")[-1])
def test_kernels_use_no_atomics(module):
    source = inspect.getsource(module)
    assert not re.search(r"\batomic_\w+", source), f"{module.__name__} accumulates with atomics"

