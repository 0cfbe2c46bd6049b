"""Coordinate check: does the typical activation size stay flat as the model gets wider?

Under μP, after a few Adam steps the mean |activation| of every layer is (roughly) independent
of width; under SP it grows with width (hidden layers ~width, since an O(lr) step on every entry
of an n-wide matrix moves its output by ~lr*n). This module is model-agnostic:

    results = {}
    for param in ("sp", "mup"):
        for width in widths:
            model, step_fn, batches = build(param, width)       # caller's code
            results.setdefault(param, {})[width] = record_coords(model, batches, step_fn, steps=5)
    write_outputs(results, "out/")            # coord.json, coord.csv, coord.png
    growth_slope(results)                     # {"sp": 0.9, "mup": 0.02}
    growing_modules(results)                  # {"sp": {"...mlp.linear_fc1": 1.1, ...}, "mup": {}}

`results[parametrization][width][module] = [mean |output| at step 0, 1, ...]`, where step t is
measured in the forward pass that precedes the t-th optimizer update (step 0 = at init). A mean
over modules can hide one wrong layer among many right ones; `growing_modules` names each module
whose activation grows with width, which is what the check fails on.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

Coords = Dict[str, List[float]]
Results = Dict[str, Dict[int, Coords]]


def _first_tensor(output):
    """Megatron modules return (output, bias) tuples; the activation is the first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _leaf_modules(name: str, module: torch.nn.Module) -> bool:
    return name != "" and next(module.children(), None) is None


def output_tensor(name: str, output) -> Optional[torch.Tensor]:
    """The default activation to watch: the module's output tensor."""
    return _first_tensor(output)


def record_coords(model: torch.nn.Module, batches: Sequence, optimizer_step_fn: Callable,
                  steps: int, module_filter: Optional[Callable[[str, torch.nn.Module], bool]] = None,
                  activation: Callable[[str, object], Optional[torch.Tensor]] = output_tensor) -> Coords:
    """Run `steps` training steps and record each selected module's mean |activation| per step.

    optimizer_step_fn(model, batch) must do forward + backward + optimizer step (it is the
    caller's training step; its forward is what the hooks see). batches[t % len(batches)] is
    used at step t. module_filter(name, module) picks modules (default: leaf modules). If a
    module runs several times in one step, its values are averaged. activation(name, output)
    picks the tensor to watch from a module's output (default: the output itself; attention
    logits, for example, are computed there from a probe's query and key).
    """
    if steps <= 0:
        raise ValueError(f"record_coords: steps must be > 0, got {steps}")
    if len(batches) == 0:
        raise ValueError("record_coords: need at least one batch")
    module_filter = module_filter or _leaf_modules
    chosen = [(n, m) for n, m in model.named_modules() if module_filter(n, m)]
    if not chosen:
        raise ValueError("record_coords: module_filter selected no modules")

    current: Dict[str, List[float]] = {}

    def make_hook(name):
        def hook(module, inputs, output):
            with torch.no_grad():
                tensor = activation(name, output)
                if tensor is not None:
                    current.setdefault(name, []).append(tensor.detach().float().abs().mean().item())
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in chosen]
    coords: Coords = {n: [] for n, _ in chosen}
    try:
        for t in range(steps):
            current.clear()
            optimizer_step_fn(model, batches[t % len(batches)])
            for name, _ in chosen:
                values = current.get(name)
                coords[name].append(sum(values) / len(values) if values else float("nan"))
    finally:
        for handle in handles:
            handle.remove()
    # Modules that never ran (e.g. unused branches) would only add NaN curves.
    return {n: v for n, v in coords.items() if not all(math.isnan(x) for x in v)}


def _fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def module_slopes(results: Results, step: int = -1, window: int = 1) -> Dict[str, Dict[str, float]]:
    """Per parametrization, per module: log-log slope of mean |activation| vs width at `step`, or of
    its average over the `window` recorded steps that end at `step` (which damps the step-to-step
    jitter of a short run on a small batch)."""
    if window < 1:
        raise ValueError(f"module_slopes: window must be >= 1, got {window}")
    out: Dict[str, Dict[str, float]] = {}
    for param, by_width in results.items():
        widths = sorted(int(w) for w in by_width)
        if len(widths) < 2:
            raise ValueError(f"growth slope needs >= 2 widths, {param!r} has {widths}")
        per_width = {w: by_width[w] if w in by_width else by_width[str(w)] for w in widths}
        modules = set.intersection(*(set(c) for c in per_width.values()))
        out[param] = {}
        for module in sorted(modules):
            ys = []
            for w in widths:
                values = per_width[w][module]
                end = len(values) + step + 1 if step < 0 else step + 1
                if not 0 < end <= len(values) or end - window < 0:
                    raise ValueError(f"module_slopes: step {step} with window {window} is outside the "
                                     f"{len(values)} recorded steps")
                ys.append(sum(values[end - window:end]) / window)
            if all(y > 0 and math.isfinite(y) for y in ys):
                out[param][module] = _fit_slope(widths, ys)
    return out


def growth_slope(results: Results, step: int = -1,
                 modules: Optional[Iterable[str]] = None) -> Dict[str, float]:
    """Per parametrization: mean over modules of the fitted log-log slope of activation size vs
    width at `step` (default: the last recorded). ~0 means width-independent (μP working);
    clearly > 0 means activations blow up with width (SP). `modules` restricts the average."""
    keep = set(modules) if modules is not None else None
    out = {}
    for param, slopes in module_slopes(results, step).items():
        values = [s for m, s in slopes.items() if keep is None or m in keep]
        if not values:
            raise ValueError(f"growth_slope: no usable modules for {param!r}")
        out[param] = sum(values) / len(values)
    return out


# Log-log slope of mean |activation| against width above which a module counts as growing with width.
# Measured on the real model's check (megatron_ext/training/coord_check.py, default Setup, seeds 1-4, slopes
# of the second half of the steps): correct μP <= 0.16 in every module, with widths grown through heads
# or head dim, with and without Crystal's multipliers; each μP rule planted wrong in
# tests/mup/test_mup_coord_check_model.py >= 0.29 (the attention scale; fc1 LR ~0.65, output multiplier
# ~0.4); SP ~1 and more.
GROWTH_TOLERANCE = 0.25


def growing_modules(results: Results, window: Optional[int] = None,
                    tolerance: float = GROWTH_TOLERANCE) -> Dict[str, Dict[str, float]]:
    """The coordinate check's verdict. Per parametrization: {module: slope} of every module whose
    activation grows with width (log-log slope > tolerance, of the activation averaged over the
    last `window` steps; default: the second half of the recorded steps). Empty: the check passes.

    Only growth fails: a negative slope is the init part of an activation shrinking with width
    (under μP, e.g. the logits' init ~1/sqrt(m), or the attention logits' ~1/sqrt(head_dim) before
    q and k align) while the updates, which μP keeps width-independent, have not yet taken over.
    """
    if window is None:
        steps = min(len(v) for by_w in results.values() for c in by_w.values() for v in c.values())
        window = max(1, steps // 2)
    return {param: {m: s for m, s in slopes.items() if s > tolerance}
            for param, slopes in module_slopes(results, window=window).items()}


def _plot(results: Results, path: str, steps_to_plot: List[int], axis: str = "width") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(results)
    fig, axes = plt.subplots(len(params), len(steps_to_plot), squeeze=False, sharey=True,
                             figsize=(3.2 * len(steps_to_plot), 2.8 * len(params)))
    for row, param in enumerate(params):
        widths = sorted(int(w) for w in results[param])
        per_width = {w: results[param].get(w, results[param].get(str(w))) for w in widths}
        modules = sorted(set.intersection(*(set(c) for c in per_width.values())))
        for col, step in enumerate(steps_to_plot):
            ax = axes[row][col]
            for module in modules:
                ax.plot(widths, [per_width[w][module][step] for w in widths], marker=".",
                        label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{param}  step {step}", fontsize=9)
            ax.set_xlabel(axis, fontsize=8)
            if col == 0:
                ax.set_ylabel("mean |activation|", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    bottom = 0.0
    if len(labels) <= 24:  # beyond that a legend is unreadable; filter modules instead
        rows = math.ceil(len(labels) / 3)
        bottom = min(0.4, 0.06 * rows / len(params) + 0.02)
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: Results, out_dir: str, max_panels: int = 6, axis: str = "width") -> Dict[str, str]:
    """Write coord.json (raw numbers + slopes), coord.csv (long format) and coord.png (rows:
    parametrizations, columns: steps, curves: modules vs width on log-log axes). Returns the
    paths written; the png is skipped (with a `png_skipped` reason) if matplotlib is missing.
    `axis` names what the results are keyed by ("width", or "depth" for the depth check): the csv
    column and the plot's x label."""
    os.makedirs(out_dir, exist_ok=True)
    num_steps = min(len(v) for by_w in results.values() for c in by_w.values() for v in c.values())
    step_ids = list(range(num_steps))
    if num_steps > max_panels:  # evenly spaced, always including the first and last
        step_ids = sorted({round(i * (num_steps - 1) / (max_panels - 1)) for i in range(max_panels)})

    paths = {"json": os.path.join(out_dir, "coord.json"), "csv": os.path.join(out_dir, "coord.csv")}
    serialisable = {p: {str(w): c for w, c in by_w.items()} for p, by_w in results.items()}
    with open(paths["json"], "w") as f:
        json.dump({"results": serialisable,
                   "growth_slope_last_step": growth_slope(results),
                   "module_slopes_last_step": module_slopes(results),
                   "growing_modules": growing_modules(results)}, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["parametrization", axis, "module", "step", "mean_abs"])
        for param, by_width in results.items():
            for width in sorted(by_width, key=int):
                for module, values in by_width[width].items():
                    for step, value in enumerate(values):
                        writer.writerow([param, int(width), module, step, repr(value)])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        paths["png_skipped"] = "matplotlib is not installed"
        return paths
    paths["png"] = os.path.join(out_dir, "coord.png")
    _plot(results, paths["png"], step_ids, axis)
    return paths
