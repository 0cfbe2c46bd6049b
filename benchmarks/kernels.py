"""Benchmark the fused Triton kernels in megatron_ext.kernels (needs a CUDA GPU).

For Amber/Crystal shapes in bf16 (8192 tokens, hidden 4096; SwiGLU FFN 11008
and 10922; rotary 32 heads x 128, full and 25% partial, both styles) it times
forward, backward and forward+backward with CUDA events (warm-up, then the
median of many runs) and prints

  * achieved GB/s = bytes the op must read + write / time,
  * that as a fraction of device-to-device copy bandwidth measured in the same
    run (torch copy_ of a large buffer: the practical memory-bound ceiling),
  * the speed ratio of every baseline vs ours (t_baseline / t_ours, >1 means
    ours is faster): torch eager reference, torch.compile of the reference, and
    Liger-Kernel / apex / Transformer Engine when importable.

    python benchmarks/kernels.py                  # everything
    python benchmarks/kernels.py --ops rms_norm swiglu --modes fwd bwd
    python benchmarks/kernels.py --dry-run        # CPU: build shapes, list cases
"""
import argparse
import importlib
import importlib.util
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ext.kernels import apply_rotary, layer_norm, rms_norm, swiglu  # noqa: E402
from megatron_ext.kernels import apply_rotary_ref, layer_norm_ref, rms_norm_ref, swiglu_ref  # noqa: E402

OPS = ("rms_norm", "layer_norm", "swiglu", "rotary")
MODES = ("fwd", "bwd", "fwd+bwd")
EPS = 1e-5


@dataclass
class Case:
    """One op at one shape.

    make_inputs(device) -> list of tensors (those with requires_grad get grads).
    impls: name -> fn(*inputs) -> tensor or tuple of tensors; "ours" is the
    reference point for ratios. Each impl may have its own input preparation
    (e.g. a baseline's native layout) via `prepare`.
    """

    name: str
    op: str
    make_inputs: Callable[[torch.device], List[torch.Tensor]]
    bytes_fwd: int
    bytes_bwd: int
    impls: Dict[str, Callable] = field(default_factory=dict)
    prepare: Dict[str, Callable] = field(default_factory=dict)


def _nbytes(*numels_and_sizes):
    return sum(n * s for n, s in numels_and_sizes)


# --------------------------------------------------------------------------- baselines
def _try(fn):
    try:
        return fn()
    except Exception as e:  # optional dependency missing or API drift: just skip it
        return e


def _liger():
    out = {}
    r = _try(lambda: importlib.import_module("liger_kernel.ops.rms_norm").LigerRMSNormFunction)
    if not isinstance(r, Exception):
        out["rms_norm"] = lambda x, w: r.apply(x, w, EPS)
    r = _try(lambda: importlib.import_module("liger_kernel.ops.layer_norm").LigerLayerNormFunction)
    if not isinstance(r, Exception):
        out["layer_norm"] = lambda x, w, b: r.apply(x, w, b, EPS)
    r = _try(lambda: importlib.import_module("liger_kernel.ops.swiglu").LigerSiLUMulFunction)
    if not isinstance(r, Exception):
        # Liger takes gate and up as separate tensors.
        out["swiglu"] = lambda x: r.apply(*torch.chunk(x, 2, dim=-1))
    r = _try(lambda: importlib.import_module("liger_kernel.ops.rope").LigerRopeFunction)
    if not isinstance(r, Exception):
        out["rotary"] = r
    return out


def _apex():
    out = {}
    m = _try(lambda: importlib.import_module("apex.normalization.fused_layer_norm"))
    if not isinstance(m, Exception):
        if hasattr(m, "fused_rms_norm_affine"):
            out["rms_norm"] = lambda x, w: m.fused_rms_norm_affine(x, w, (x.shape[-1],), EPS)
        out["layer_norm"] = lambda x, w, b: m.fused_layer_norm_affine(x, w, b, (x.shape[-1],), EPS)
    f = _try(lambda: importlib.import_module("apex.transformer.functional").fused_apply_rotary_pos_emb)
    if not isinstance(f, Exception):
        out["rotary"] = f
    return out


def _te():
    out = {}
    te = _try(lambda: importlib.import_module("transformer_engine.pytorch"))
    if isinstance(te, Exception):
        return out
    out["rms_norm_module"] = getattr(te, "RMSNorm", None)
    out["layer_norm_module"] = getattr(te, "LayerNorm", None)
    for path in (
        "transformer_engine.pytorch.attention.rope",
        "transformer_engine.pytorch.dot_product_attention.rope",
        "transformer_engine.pytorch.attention",
    ):
        f = _try(lambda: importlib.import_module(path).apply_rotary_pos_emb)
        if not isinstance(f, Exception):
            out["rotary"] = f
            break
    return out


# --------------------------------------------------------------------------- cases
def build_cases(args, device) -> List[Case]:
    dt = torch.bfloat16
    e = torch.finfo(dt).bits // 8
    T, H = args.tokens, args.hidden
    compile_ok = not args.no_compile  # torch.compile is lazy: safe to build on meta
    liger = _liger() if device.type == "cuda" else {}
    apex = _apex() if device.type == "cuda" else {}
    te = _te() if device.type == "cuda" else {}
    cases = []

    def maybe_compile(fn):
        return torch.compile(fn) if compile_ok else None

    # ---- RMSNorm / LayerNorm: [T, H]
    if "rms_norm" in args.ops:
        def mk(dev):
            return [torch.randn(T, H, device=dev, dtype=dt, requires_grad=True),
                    torch.randn(H, device=dev, dtype=dt, requires_grad=True)]
        c = Case(f"rms_norm T={T} H={H}", "rms_norm", mk,
                 bytes_fwd=_nbytes((T * H, 2 * e), (H, e), (T, 4)),
                 bytes_bwd=_nbytes((T * H, 3 * e), (H, 2 * e), (T, 4)))
        c.impls["ours"] = lambda x, w: rms_norm(x, w, EPS, impl="triton")
        c.impls["torch"] = lambda x, w: rms_norm_ref(x, w, EPS)
        cf = maybe_compile(lambda x, w: rms_norm_ref(x, w, EPS))
        if cf:
            c.impls["torch.compile"] = cf
        for lib, d in (("liger", liger), ("apex", apex)):
            if "rms_norm" in d:
                c.impls[lib] = d["rms_norm"]
        if te.get("rms_norm_module") is not None:
            mod = _try(lambda: te["rms_norm_module"](H, eps=EPS, params_dtype=dt).to(device))
            if not isinstance(mod, Exception):
                c.impls["te"] = lambda x, w, mod=mod: mod(x)  # module owns its own weight
        cases.append(c)

    if "layer_norm" in args.ops:
        def mk(dev):
            return [torch.randn(T, H, device=dev, dtype=dt, requires_grad=True),
                    torch.randn(H, device=dev, dtype=dt, requires_grad=True),
                    torch.randn(H, device=dev, dtype=dt, requires_grad=True)]
        c = Case(f"layer_norm T={T} H={H}", "layer_norm", mk,
                 bytes_fwd=_nbytes((T * H, 2 * e), (H, 2 * e), (T, 8)),
                 bytes_bwd=_nbytes((T * H, 3 * e), (H, 3 * e), (T, 8)))
        c.impls["ours"] = lambda x, w, b: layer_norm(x, w, b, EPS, impl="triton")
        c.impls["torch"] = lambda x, w, b: layer_norm_ref(x, w, b, EPS)
        c.impls["torch.nn.functional"] = lambda x, w, b: torch.nn.functional.layer_norm(x, (H,), w, b, EPS)
        cf = maybe_compile(lambda x, w, b: layer_norm_ref(x, w, b, EPS))
        if cf:
            c.impls["torch.compile"] = cf
        for lib, d in (("liger", liger), ("apex", apex)):
            if "layer_norm" in d:
                c.impls[lib] = d["layer_norm"]
        if te.get("layer_norm_module") is not None:
            mod = _try(lambda: te["layer_norm_module"](H, eps=EPS, params_dtype=dt).to(device))
            if not isinstance(mod, Exception):
                c.impls["te"] = lambda x, w, b, mod=mod: mod(x)
        cases.append(c)

    # ---- SwiGLU: fc1 output [T, 2F] -> [T, F]
    if "swiglu" in args.ops:
        for F in args.ffn:
            def mk(dev, F=F):
                return [torch.randn(T, 2 * F, device=dev, dtype=dt, requires_grad=True)]
            c = Case(f"swiglu T={T} F={F}", "swiglu", mk,
                     bytes_fwd=_nbytes((T * F, 3 * e)),
                     bytes_bwd=_nbytes((T * F, 5 * e)))
            c.impls["ours"] = lambda x: swiglu(x, impl="triton")
            c.impls["torch"] = swiglu_ref
            cf = maybe_compile(swiglu_ref)
            if cf:
                c.impls["torch.compile"] = cf
            if "swiglu" in liger:
                c.impls["liger"] = liger["swiglu"]
            cases.append(c)

    # ---- Rotary: q [s, 1, hq, d], k [s, 1, hk, d]
    if "rotary" in args.ops:
        hq, hk, d = args.heads, args.kv_heads, args.head_dim
        for frac in (1.0, 0.25):
            r = int(d * frac) // 2 * 2
            for inter in (False, True):
                def mk(dev, r=r):
                    pos = torch.arange(T, device=dev, dtype=torch.float32)
                    inv = 1.0 / 10000 ** (torch.arange(0, r, 2, device=dev, dtype=torch.float32) / r)
                    return [torch.randn(T, 1, hq, d, device=dev, dtype=dt, requires_grad=True),
                            torch.randn(T, 1, hk, d, device=dev, dtype=dt, requires_grad=True),
                            torch.outer(pos, inv)]
                style = "interleaved" if inter else "half-split"
                c = Case(f"rotary s={T} hq={hq} hk={hk} d={d} r={r} {style}", "rotary", mk,
                         bytes_fwd=_nbytes((T * (hq + hk) * d, 2 * e), (T * r // 2, 4)),
                         bytes_bwd=_nbytes((T * (hq + hk) * d, 2 * e), (T * r // 2, 4)))
                c.impls["ours"] = lambda q, k, f, inter=inter: apply_rotary(q, k, f, inter, impl="triton")
                c.impls["torch"] = lambda q, k, f, inter=inter: apply_rotary_ref(q, k, f, inter)
                cf = maybe_compile(lambda q, k, f, inter=inter: apply_rotary_ref(q, k, f, inter))
                if cf:
                    c.impls["torch.compile"] = cf
                _add_rotary_baselines(c, liger, apex, te, inter, r, d)
                cases.append(c)
    return cases


def _te_freqs(f, inter):
    # TE/apex take per-channel angles [s, 1, 1, r]: cat(f, f) for half-split,
    # each angle repeated twice for interleaved. Timing only, not checked.
    emb = f.repeat_interleave(2, dim=-1) if inter else torch.cat((f, f), dim=-1)
    return emb[:, None, None, :].contiguous()


def _add_rotary_baselines(c, liger, apex, te, inter, r, d):
    if "rotary" in te:
        f_te = te["rotary"]

        def te_rope(q, k, emb, f_te=f_te, inter=inter):
            kw = dict(tensor_format="sbhd", fused=True)
            if inter:
                kw["interleaved"] = True
            return f_te(q, emb, **kw), f_te(k, emb, **kw)

        c.impls["te"] = te_rope
        c.prepare["te"] = lambda q, k, f, inter=inter: [q, k, _te_freqs(f, inter)]
    if "rotary" in apex and not inter:
        f_apex = apex["rotary"]
        c.impls["apex"] = lambda q, k, emb, f_apex=f_apex: (f_apex(q, emb), f_apex(k, emb))
        c.prepare["apex"] = lambda q, k, f: [q, k, _te_freqs(f, False)]
    if "rotary" in liger and not inter and r == d:
        # Liger: HF layout [b, h, s, d] with cos/sin [1, s, d]; full half-split only.
        fn = liger["rotary"]
        c.impls["liger"] = lambda q, k, cos, sin, fn=fn: fn.apply(q, k, cos, sin)

        def prep(q, k, f):
            emb = torch.cat((f, f), dim=-1)[None]
            qh = q.detach().permute(1, 2, 0, 3).contiguous().requires_grad_()
            kh = k.detach().permute(1, 2, 0, 3).contiguous().requires_grad_()
            return [qh, kh, emb.cos().to(q.dtype), emb.sin().to(q.dtype)]

        c.prepare["liger"] = prep


# --------------------------------------------------------------------------- timing
def cuda_time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def copy_bandwidth_gbs(device, nbytes, warmup, reps):
    """Device-to-device copy bandwidth (read + write bytes / time)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup, reps)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def time_impl(fn, inputs, mode, warmup, reps):
    grad_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "fwd":
        return cuda_time_ms(lambda: fn(*inputs), warmup, reps)
    outs = _as_tuple(fn(*inputs))
    dys = [torch.randn_like(o) for o in outs]
    # Modules (TE) own their weights: differentiate w.r.t. whatever needs grad.
    targets = grad_inputs
    if mode == "bwd":
        return cuda_time_ms(
            lambda: torch.autograd.grad(outs, targets, dys, retain_graph=True, allow_unused=True),
            warmup, reps)

    def step():
        o = _as_tuple(fn(*inputs))
        torch.autograd.grad(o, targets, dys, allow_unused=True)

    return cuda_time_ms(step, warmup, reps)


def run(args):
    device = torch.device("cuda")
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth_gbs(device, args.copy_bytes, args.warmup, args.reps)
    print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"device-to-device copy bandwidth: {copy_gbs:.0f} GB/s ({args.copy_bytes / 2**20:.0f} MiB buffer)")
    print(f"warm-up {args.warmup}, median of {args.reps} runs; ratio = t_impl / t_ours (>1: ours faster)\n")
    hdr = f"{'case':<52} {'mode':<8} {'impl':<20} {'ms':>9} {'GB/s':>8} {'%copy':>6} {'ratio':>7}"
    for case in build_cases(args, device):
        print(hdr)
        base_inputs = case.make_inputs(device)
        for mode in args.modes:
            nbytes = {"fwd": case.bytes_fwd, "bwd": case.bytes_bwd}.get(mode, case.bytes_fwd + case.bytes_bwd)
            t_ours = None
            for name, fn in case.impls.items():
                prep = case.prepare.get(name)
                inputs = prep(*base_inputs) if prep else base_inputs
                t = _try(lambda: time_impl(fn, inputs, mode, args.warmup, args.reps))
                if isinstance(t, Exception):
                    print(f"{case.name:<52} {mode:<8} {name:<20} skipped: {type(t).__name__}: {str(t)[:60]}")
                    continue
                if name == "ours":
                    t_ours = t
                gbs = nbytes / (t * 1e-3) / 1e9
                ratio = f"{t / t_ours:7.2f}" if t_ours else "    n/a"
                print(f"{case.name:<52} {mode:<8} {name:<20} {t:9.4f} {gbs:8.0f} {gbs / copy_gbs:6.1%} {ratio}")
            torch.cuda.empty_cache()
        print()


def dry_run(args):
    """Build every case's inputs on the meta device (exact shapes, no memory) and list them."""
    device = torch.device("meta")
    print("dry run: shapes built on the meta device; nothing is timed")
    for case in build_cases(args, device):
        shapes = ", ".join(f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}" for t in case.make_inputs(device))
        print(f"{case.name:<52} inputs [{shapes}]")
        print(f"{'':<52} bytes fwd {case.bytes_fwd / 2**20:.1f} MiB, bwd {case.bytes_bwd / 2**20:.1f} MiB; "
              f"impls: {', '.join(case.impls)}; modes: {', '.join(args.modes)}")
    libs = {"liger_kernel": "Liger-Kernel", "apex": "apex", "transformer_engine": "Transformer Engine"}
    for mod, name in libs.items():
        ok = importlib.util.find_spec(mod) is not None
        print(f"baseline {name}: {'importable' if ok else 'not installed'}")


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--tokens", type=int, default=8192, help="rows (seq x micro-batch)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, nargs="+", default=[11008, 10922], help="SwiGLU FFN sizes F")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--copy-bytes", type=int, default=1 << 30, help="buffer size for the copy-bandwidth probe")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--dry-run", action="store_true", help="build shapes on CPU (meta) and list cases")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return
    if not torch.cuda.is_available():
        raise SystemExit("CUDA is required for timing; use --dry-run on CPU")
    run(args)


if __name__ == "__main__":
    main()
