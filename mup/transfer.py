"""μTransfer sweep results: final validation loss against learning rate per width and parametrization,
the best LR at each width and how far it moves as the model widens (0 octaves = the LR transfers).

Reads the JSON-lines logs of a sweep (`{param}_w{width}_lr{lr}_s{seed}.jsonl`, as examples/mup_transfer.sh
names them; `_s{seed}` may be absent) and writes transfer.json, transfer.md and transfer.png. With several
seeds, losses are averaged over seeds (an LR that diverges for any seed counts as diverged), the best LR is
found on the mean and per seed (its spread), and consecutive widths are compared seed by seed to say
whether the wider model is better beyond the seed noise. Plain Python; matplotlib only for
the plot. The best LR is reported twice: the best grid point, and the vertex of a parabola through the
best point and its two neighbours in (log2 LR, loss), which resolves shifts smaller than the grid
spacing; the vertex is left out ("edge") when the best grid point is the smallest or largest LR,
because then the optimum may lie outside the grid.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

_NAME = re.compile(r"^(?P<param>[a-z]+)_w(?P<width>\d+)_lr(?P<lr>[0-9.eE+-]+)(?:_s(?P<seed>\d+))?\.jsonl$")


def final_loss(path: Path) -> float:
    """Final validation loss of one run; inf when it diverged or did not finish (a NaN loss, a
    crashed run and a missing final evaluation all count as 'this LR does not work')."""
    loss = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key in ("final validation lm loss", "validation lm loss"):
            if key in record:
                loss = record[key]
                break
    if loss is None or not math.isfinite(loss):
        return math.inf
    return float(loss)


def collect_seeds(runs_dir: Path) -> dict:
    """{param: {width: {lr: {seed: final loss}}}}; a log named without `_sSEED` is seed "" (one-seed sweeps
    written before seeds were added)."""
    table: dict = {}
    for path in sorted(runs_dir.glob("*.jsonl")):
        match = _NAME.match(path.name)
        if match:
            param, width, lr = match["param"], int(match["width"]), float(match["lr"])
            table.setdefault(param, {}).setdefault(width, {}).setdefault(lr, {})[match["seed"] or ""] = \
                final_loss(path)
    if not table:
        raise SystemExit(f"no run logs named PARAM_wWIDTH_lrLR_sSEED.jsonl in {runs_dir}")
    return table


def _mean(values) -> float:
    """Mean over seeds; inf if any seed diverged (an LR that fails for one seed in three does not work)."""
    values = list(values)
    return math.inf if not all(math.isfinite(v) for v in values) else sum(values) / len(values)


def _std(values) -> float:
    """Sample standard deviation (n - 1); 0 for one value, inf if any is inf."""
    values = list(values)
    if not all(math.isfinite(v) for v in values):
        return math.inf
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def collect(runs_dir: Path) -> dict:
    """{param: {width: {lr: final loss, averaged over seeds}}}"""
    return {p: {w: {lr: _mean(by_seed.values()) for lr, by_seed in by_lr.items()} for w, by_lr in by_w.items()}
            for p, by_w in collect_seeds(runs_dir).items()}


def best_lr(losses: dict) -> dict:
    """Best grid LR, its loss, and the parabola-vertex estimate in log2(LR) (None at an edge)."""
    lrs = sorted(losses)
    i = min(range(len(lrs)), key=lambda k: losses[lrs[k]])
    out = {"grid": lrs[i], "loss": losses[lrs[i]], "interpolated": None}
    if 0 < i < len(lrs) - 1 and all(math.isfinite(losses[lr]) for lr in lrs[i - 1:i + 2]):
        xs = [math.log2(lr) for lr in lrs[i - 1:i + 2]]
        ys = [losses[lr] for lr in lrs[i - 1:i + 2]]
        # Vertex of the parabola through three points (unequal spacing allowed).
        d1, d2 = (ys[1] - ys[0]) / (xs[1] - xs[0]), (ys[2] - ys[1]) / (xs[2] - xs[1])
        curvature = (d2 - d1) / (xs[2] - xs[0])
        if curvature > 0:
            vertex = (xs[0] + xs[1]) / 2 - d1 / (2 * curvature)
            out["interpolated"] = 2 ** min(max(vertex, xs[0]), xs[2])
    return out


# Two-sided 95% quantile of Student's t by degrees of freedom (paired test across seeds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _pick(best: dict) -> float:
    return best["interpolated"] or best["grid"]


def _width_steps(seeds_table: dict) -> dict:
    """For each pair of consecutive widths: does the wider model reach a lower loss (each seed's best over
    the LR grid), beyond the seed-to-seed noise? Paired by seed (same data order and validation batches);
    `resolved` is a two-sided paired t-test at 95% (None with one seed: the noise is unknown)."""
    steps = {}
    for param, by_w in seeds_table.items():
        widths = sorted(by_w)
        seeds = sorted({s for by_lr in by_w.values() for by_seed in by_lr.values() for s in by_seed})
        best = {w: {s: min(by_seed.get(s, math.inf) for by_seed in by_w[w].values()) for s in seeds} for w in widths}
        rows = []
        for lo, hi in zip(widths, widths[1:]):
            diffs = [best[hi][s] - best[lo][s] for s in seeds]
            n = len(diffs)
            mean, std = _mean(diffs), _std(diffs)
            resolved = None
            if n >= 2 and math.isfinite(mean):
                resolved = abs(mean) > _T95.get(n - 1, 2.0) * std / math.sqrt(n)
            rows.append({"from_width": lo, "to_width": hi, "diffs": diffs, "mean": mean, "std": std,
                         "wider_better": sum(d < 0 for d in diffs), "seeds": n, "resolved": resolved})
        steps[param] = rows
    return steps


def summarise(table: dict, seeds_table: dict | None = None) -> dict:
    """Best LR per width on the seed-averaged losses, how far it moves, and, given the per-seed table, the
    same per seed (the spread) and whether consecutive widths differ beyond the seed noise."""
    best = {p: {w: best_lr(by_lr) for w, by_lr in sorted(by_w.items())} for p, by_w in table.items()}
    shift = {}
    for param, by_width in best.items():
        widths = sorted(by_width)
        if len(widths) >= 2:
            lo, hi = by_width[widths[0]], by_width[widths[-1]]
            # octaves the best LR moved from the narrowest to the widest model (0 = transfers)
            shift[param] = {"from_width": widths[0], "to_width": widths[-1],
                            "grid_octaves": math.log2(hi["grid"] / lo["grid"]),
                            "octaves": math.log2(_pick(hi) / _pick(lo))}
    summary = {"best": best, "shift": shift}
    if seeds_table is None:
        return summary
    seeds = sorted({s for by_w in seeds_table.values() for by_lr in by_w.values() for by_seed in by_lr.values()
                    for s in by_seed})
    per_seed = {p: {w: {s: best_lr({lr: by_seed.get(s, math.inf) for lr, by_seed in by_lr.items()}) for s in seeds}
                    for w, by_lr in sorted(by_w.items())} for p, by_w in seeds_table.items()}
    summary["seeds"] = seeds
    summary["best_per_seed"] = per_seed
    for param, s in shift.items():
        octaves = [math.log2(_pick(per_seed[param][s["to_width"]][seed]) / _pick(per_seed[param][s["from_width"]][seed]))
                   for seed in seeds]
        s.update(octaves_per_seed=octaves, octaves_mean=_mean(octaves), octaves_std=_std(octaves))
    summary["width_steps"] = _width_steps(seeds_table)
    summary["loss_std"] = {p: {w: {lr: _std(by_seed.values()) for lr, by_seed in by_lr.items()}
                               for w, by_lr in by_w.items()} for p, by_w in seeds_table.items()}
    return summary


def _fmt_lr(lr) -> str:
    return "edge" if lr is None else f"{lr:.3g}"


def _fmt_loss(loss: float, std: float | None = None) -> str:
    if not math.isfinite(loss):
        return "diverged"
    return f"{loss:.3f}" if not std else f"{loss:.3f} ± {std:.3f}"


def markdown(table: dict, summary: dict, title: str) -> str:
    seeds = summary.get("seeds", [""])
    many = len(seeds) > 1
    std = summary.get("loss_std", {})
    lines = [f"## μTransfer sweep: {title}" if title else "## μTransfer sweep", ""]
    if many:
        lines += [f"{len(seeds)} seeds ({', '.join(seeds)}); losses are the mean over seeds ± their standard "
                  "deviation, and the best LR is taken on the mean.", ""]
    lines += ["Best learning rate per width (final validation loss):", "",
              "| width | " + " | ".join(f"{p}: best LR (grid) | {p}: interpolated | {p}: loss" +
                                     (f" | {p}: best LR per seed" if many else "") for p in table) + " |",
              "|---" * (1 + (4 if many else 3) * len(table)) + "|"]
    widths = sorted({w for by_w in table.values() for w in by_w})
    for w in widths:
        cells = []
        for p in table:
            b = summary["best"][p].get(w)
            if b is None:
                cells += [""] * (4 if many else 3)
                continue
            cells += [f"{b['grid']:.3g}", _fmt_lr(b["interpolated"]),
                      _fmt_loss(b["loss"], std.get(p, {}).get(w, {}).get(b["grid"]))]
            if many:
                cells.append(", ".join(f"{summary['best_per_seed'][p][w][s]['grid']:.3g}" for s in seeds))
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines.append("")
    for p, s in summary["shift"].items():
        line = (f"* {p}: best LR moved {s['octaves']:+.2f} octaves (grid: {s['grid_octaves']:+.0f}) "
                f"from width {s['from_width']} to {s['to_width']}")
        if many:
            line += (f"; per seed {', '.join(f'{o:+.2f}' for o in s['octaves_per_seed'])} "
                     f"(mean {s['octaves_mean']:+.2f} ± {s['octaves_std']:.2f})")
        lines.append(line)
    if many:
        lines += ["", "Does the wider model reach a lower loss (each seed's best over the grid; paired by seed, "
                  "two-sided paired t-test at 95%)?", "",
                  "| parametrization | widths | loss change (mean ± std) | wider better in | beyond noise |",
                  "|---|---|---|---|---|"]
        for p, rows in summary["width_steps"].items():
            for r in rows:
                verdict = {True: "yes", False: "no: within noise", None: "unknown"}[r["resolved"]]
                lines.append(f"| {p} | {r['from_width']} → {r['to_width']} | {r['mean']:+.3f} ± {r['std']:.3f} | "
                             f"{r['wider_better']}/{r['seeds']} seeds | {verdict} |")
    for p, by_w in table.items():
        lrs = sorted({lr for by_lr in by_w.values() for lr in by_lr})
        lines += ["", f"Final validation loss, {p}" + (" (mean ± std over seeds)" if many else "") + ":", "",
                  "| width | " + " | ".join(f"lr {lr:.3g}" for lr in lrs) + " |", "|---" * (1 + len(lrs)) + "|"]
        for w in sorted(by_w):
            best = summary["best"][p][w]["grid"]
            cells = []
            for lr in lrs:
                text = _fmt_loss(by_w[w][lr], std.get(p, {}).get(w, {}).get(lr)) if lr in by_w[w] else ""
                cells.append(f"**{text}**" if lr == best else text)
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, summary: dict, path: Path, title: str, seeds_table: dict | None = None) -> None:
    """Loss against LR per width: the seed mean as a line, the range over seeds as a band, the best LR of
    the mean as a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(table)
    finite = [v for by_w in table.values() for by_lr in by_w.values() for v in by_lr.values() if math.isfinite(v)]
    low = min(finite)
    fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4), sharey=True, squeeze=False)
    nan = float("nan")
    for ax, param in zip(axes[0], params):
        for width, by_lr in sorted(table[param].items()):
            lrs = sorted(by_lr)
            line, = ax.plot(lrs, [by_lr[lr] if math.isfinite(by_lr[lr]) else nan for lr in lrs],
                            marker="o", label=f"width {width}")
            if seeds_table is not None:
                runs = seeds_table[param][width]
                if max(len(runs[lr]) for lr in lrs) > 1:
                    lo = [min(runs[lr].values()) if math.isfinite(by_lr[lr]) else nan for lr in lrs]
                    hi = [max(runs[lr].values()) if math.isfinite(by_lr[lr]) else nan for lr in lrs]
                    ax.fill_between(lrs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            best = summary["best"][param][width]
            ax.plot([best["grid"]], [best["loss"]], marker="*", markersize=14, color=line.get_color())
        ax.set_xscale("log", base=2)
        # Diverged or far-off runs would flatten the interesting part of the curves.
        ax.set_ylim(low - 0.05, low + 1.0)
        ax.set_xlabel("learning rate (μP: base-width LR)" if param == "mup" else "learning rate")
        ax.set_title({"sp": "standard parametrization", "mup": "μP"}.get(param, param))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n_seeds = len(summary.get("seeds", [""]))
    axes[0][0].set_ylabel("final validation loss" + (f" (mean of {n_seeds} seeds; band: min-max)" if n_seeds > 1 else ""))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs_dir: str, out_dir: str, title: str = "") -> tuple[dict, str]:
    """Collect the runs, write transfer.{json,md,png} to out_dir; returns (summary, markdown text)."""
    seeds_table = collect_seeds(Path(runs_dir))
    table = {p: {w: {lr: _mean(by_seed.values()) for lr, by_seed in by_lr.items()} for w, by_lr in by_w.items()}
             for p, by_w in seeds_table.items()}
    summary = summarise(table, seeds_table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finite = lambda v: v if v is None or math.isfinite(v) else None  # noqa: E731  (JSON has no inf)
    serialisable = {"losses": {p: {str(w): {repr(lr): finite(v) for lr, v in by_lr.items()} for w, by_lr in by_w.items()}
                               for p, by_w in table.items()},
                    "best": {p: {str(w): {k: finite(v) for k, v in b.items()} for w, b in by_w.items()}
                             for p, by_w in summary["best"].items()},
                    "shift": summary["shift"], "title": title, "seeds": summary["seeds"],
                    "losses_per_seed": {p: {str(w): {repr(lr): {s: finite(v) for s, v in by_seed.items()}
                                                     for lr, by_seed in by_lr.items()} for w, by_lr in by_w.items()}
                                        for p, by_w in seeds_table.items()},
                    "best_per_seed": {p: {str(w): {s: {k: finite(v) for k, v in b.items()} for s, b in by_s.items()}
                                          for w, by_s in by_w.items()} for p, by_w in summary["best_per_seed"].items()},
                    "width_steps": {p: [{k: ([finite(x) for x in v] if isinstance(v, list) else
                                             finite(v) if isinstance(v, float) else v) for k, v in r.items()}
                                        for r in rows] for p, rows in summary["width_steps"].items()}}
    (out / "transfer.json").write_text(json.dumps(serialisable, indent=1))
    text = markdown(table, summary, title)
    (out / "transfer.md").write_text(text)
    try:
        plot(table, summary, out / "transfer.png", title, seeds_table)
    except ImportError:
        text += "\n(matplotlib is not installed: no transfer.png)\n"
    return summary, text
