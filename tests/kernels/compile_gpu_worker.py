"""Compiles every Triton kernel of megatron_ext.kernels ahead of time for NVIDIA GPUs, without a GPU.

The launch configurations are the ones the package's own launchers pick (rms_norm_fwd, swiglu_bwd,
rotary_fwd, ...): each launcher is called on `meta` tensors of a preset's shapes, with the kernel
objects replaced by recorders, so block sizes, warp counts and argument types come from the code
that launches them on a GPU, not from a copy of its heuristics.  Each distinct configuration is then
compiled with triton.compile for every target, through Triton's whole pipeline (ttir, ttgir, llir,
ptx, and cubin with the ptxas bundled in the triton wheel).

Run in a process without TRITON_INTERPRET (the kernel tests' conftest turns the interpreter on,
and interpreted kernels are never compiled).  Prints one JSON object:
    {"kernels": [every @triton.jit function in the package, "module.name"],
     "compiled": [{"kernel", "config", "target", "stages", "error"}, ...]}
"""

import importlib
import json
import os
import pkgutil
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor

import torch

TARGETS = (80, 90)  # A100 (sm_80), H100/H200 (sm_90)
DTYPES = (torch.float32, torch.bfloat16)
TENSOR_PARALLEL = (1, 2, 4, 8)
ROWS, SEQ, BATCH = 8, 16, 2  # not part of any compiled configuration: only strides and grids use them
_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
          torch.int32: "i32"}


def jit_kernels() -> dict:
    """'module.name' -> JITFunction for every @triton.jit function in megatron_ext.kernels."""
    import megatron_ext.kernels as package
    from triton.runtime.jit import JITFunction

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and value.__module__ == module.__name__:
                found[f"{info.name}.{name}"] = value
    return found


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` records the launch instead."""

    def __init__(self, name, fn, launches):
        self.name, self.fn, self.launches = name, fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, self.fn, args, kwargs))


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


def _config(fn, args, kwargs):
    """(signature, constexprs, options) of one recorded launch."""
    names = fn.arg_names
    values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    constexpr = {p.name for p in fn.params if p.is_constexpr}
    signature = {n: "constexpr" if n in constexpr else _arg_type(values[n]) for n in names}
    constexprs = {n: values[n] for n in names if n in constexpr}
    options = {k: v for k, v in kwargs.items() if k not in names}
    return signature, constexprs, options


def _preset_shapes():
    """(preset, TP, hidden, ffn per rank, q heads per rank, kv heads per rank, head dim, rotary half,
    interleaved) for every preset at every tensor-parallel size its shapes divide by."""
    from megatron_ext.models.presets import PRESETS

    for name, p in sorted(PRESETS.items()):
        heads, groups, head_dim = p.num_attention_heads, p.num_query_groups, p.kv_channels
        for tp in TENSOR_PARALLEL:
            if heads % tp or groups % tp or p.ffn_hidden_size % tp:
                continue
            yield (name, tp, p.hidden_size, p.ffn_hidden_size // tp, heads // tp, groups // tp,
                   head_dim, p.rotary_dim // 2, p.rotary_interleaved)


def _empty(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _call_launchers(hidden, ffn, hq, hk, head_dim, half, interleaved, dtype):
    """Every launcher of the package, as the model's layers call it for these shapes."""
    # The package re-exports functions under its modules' names: import the modules themselves.
    rms_norm, layer_norm, swiglu, rotary = (importlib.import_module(f"megatron_ext.kernels.{m}")
                                            for m in ("rms_norm", "layer_norm", "swiglu", "rotary"))
    x, w = _empty(ROWS, hidden, dtype=dtype), _empty(hidden, dtype=dtype)
    stats = _empty(ROWS, dtype=torch.float32)
    rms_norm.rms_norm_fwd(x, w, 1e-5)
    rms_norm.rms_norm_bwd(x, x, w, stats)
    for bias in (None, w):  # LayerNorm with and without bias
        layer_norm.layer_norm_fwd(x, w, bias, 1e-5)
        layer_norm.layer_norm_bwd(x, x, w, stats, stats, bias is not None)
    fc1, y = _empty(ROWS, 2 * ffn, dtype=dtype), _empty(ROWS, ffn, dtype=dtype)
    swiglu.swiglu_fwd(fc1)
    swiglu.swiglu_bwd(y, fc1)
    q, k = _empty(SEQ, BATCH, hq, head_dim, dtype=dtype), _empty(SEQ, BATCH, hk, head_dim, dtype=dtype)
    freqs = _empty(SEQ, half, dtype=torch.float32)
    for backward in (False, True):
        rotary.rotary_fwd(q, k, freqs, interleaved, backward=backward)


def launch_configs(kernels: dict) -> dict:
    """Distinct launch configurations: key -> (kernel name, signature, constexprs, options, used by)."""
    launches = []
    modules = {name: importlib.import_module(f"megatron_ext.kernels.{name.split('.')[0]}") for name in kernels}
    saved = {name: getattr(modules[name], name.split(".")[1]) for name in kernels}
    for name, fn in kernels.items():
        setattr(modules[name], name.split(".")[1], _Recorder(name, fn, launches))
    configs = {}
    try:
        for preset, tp, *shape in _preset_shapes():
            for dtype in DTYPES:
                start = len(launches)
                _call_launchers(*shape, dtype)
                for name, fn, args, kwargs in launches[start:]:
                    signature, constexprs, options = _config(fn, args, kwargs)
                    key = json.dumps([name, signature, constexprs, options], sort_keys=True)
                    used_by = configs.setdefault(key, (name, signature, constexprs, options, []))[4]
                    used_by.append(f"{preset} TP{tp} {_TYPES[dtype]}")
    finally:
        for name, fn in saved.items():
            setattr(modules[name], name.split(".")[1], fn)
    return configs


def _compile(job):
    """Compile one configuration for one target; returns (stages produced, error text or None)."""
    import triton
    from triton.backends.compiler import GPUTarget

    name, signature, constexprs, options, arch = job
    fn = jit_kernels()[name]
    try:
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
        return sorted(compiled.asm), None
    except Exception as err:  # report, do not stop: every failing configuration is listed
        lines = traceback.format_exception_only(type(err), err)
        return [], "".join(lines).strip()[-2000:]


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_gpu_worker: unset TRITON_INTERPRET (interpreted kernels are not compiled)")
    kernels = jit_kernels()
    configs = launch_configs(kernels)
    jobs, described = [], []
    for name, signature, constexprs, options, used_by in configs.values():
        for arch in TARGETS:
            jobs.append((name, signature, constexprs, options, arch))
            described.append({"kernel": name, "target": f"sm_{arch}",
                              "config": {"constexprs": constexprs, "options": options,
                                         "pointers": {k: v for k, v in signature.items() if v.startswith("*")},
                                         "used_by": used_by}})
    # Never launched by any launcher (a capability probe): compiled as it is, with no arguments.
    for name, fn in kernels.items():
        if not fn.arg_names and not any(job[0] == name for job in jobs):
            for arch in TARGETS:
                jobs.append((name, {}, {}, {}, arch))
                described.append({"kernel": name, "target": f"sm_{arch}", "config": {}})
    workers = max(1, min(int(os.environ.get("COMPILE_WORKERS", "2")), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_compile, jobs, chunksize=4))
    for entry, (stages, error) in zip(described, results):
        entry["stages"], entry["error"] = stages, error
    json.dump({"kernels": sorted(kernels), "compiled": described}, sys.stdout)


if __name__ == "__main__":
    main()
