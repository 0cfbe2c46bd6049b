"""μTransfer sweep results: final validation loss against learning rate per width and parametrization,
the best LR at each width and how far it moves as the model widens (0 octaves = the LR transfers).

Reads the JSON-lines logs of a sweep (`{param}_w{width}_lr{lr}.jsonl`, as examples/mup_transfer.sh
names them) and writes transfer.json, transfer.md and transfer.png. Plain Python; matplotlib only for
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

_NAME = re.compile(r"^(?P<param>[a-z]+)_w(?P<width>\d+)_lr(?P<lr>[0-9.eE+-]+)\.jsonl$")


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


def collect(runs_dir: Path) -> dict:
    """{param: {width: {lr: final loss}}}"""
    table: dict = {}
    for path in sorted(runs_dir.glob("*.jsonl")):
        match = _NAME.match(path.name)
        if match:
            param, width, lr = match["param"], int(match["width"]), float(match["lr"])
            table.setdefault(param, {}).setdefault(width, {})[lr] = final_loss(path)
    if not table:
        raise SystemExit(f"no run logs named PARAM_wWIDTH_lrLR.jsonl in {runs_dir}")
    return table


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


def summarise(table: dict) -> dict:
    best = {p: {w: best_lr(by_lr) for w, by_lr in sorted(by_w.items())} for p, by_w in table.items()}
    shift = {}
    for param, by_width in best.items():
        widths = sorted(by_width)
        if len(widths) >= 2:
            lo, hi = by_width[widths[0]], by_width[widths[-1]]
            pick = lambda b: b["interpolated"] or b["grid"]  # noqa: E731
            # octaves the best LR moved from the narrowest to the widest model (0 = transfers)
            shift[param] = {"from_width": widths[0], "to_width": widths[-1],
                            "grid_octaves": math.log2(hi["grid"] / lo["grid"]),
                            "octaves": math.log2(pick(hi) / pick(lo))}
    return {"best": best, "shift": shift}


def _fmt_lr(lr) -> str:
    return "edge" if lr is None else f"{lr:.3g}"


def _fmt_loss(loss: float) -> str:
    return "diverged" if not math.isfinite(loss) else f"{loss:.3f}"


def markdown(table: dict, summary: dict, title: str) -> str:
    lines = [f"## μTransfer sweep: {title}" if title else "## μTransfer sweep", ""]
    lines += ["Best learning rate per width (final validation loss):", "",
              "| width | " + " | ".join(f"{p}: best LR (grid) | {p}: interpolated | {p}: loss" for p in table) + " |",
              "|---" * (1 + 3 * len(table)) + "|"]
    widths = sorted({w for by_w in table.values() for w in by_w})
    for w in widths:
        cells = []
        for p in table:
            b = summary["best"][p].get(w)
            cells += [f"{b['grid']:.3g}", _fmt_lr(b["interpolated"]), _fmt_loss(b["loss"])] if b else ["", "", ""]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines.append("")
    for p, s in summary["shift"].items():
        lines.append(f"* {p}: best LR moved {s['octaves']:+.2f} octaves (grid: {s['grid_octaves']:+.0f}) "
                     f"from width {s['from_width']} to {s['to_width']}")
    for p, by_w in table.items():
        lrs = sorted({lr for by_lr in by_w.values() for lr in by_lr})
        lines += ["", f"Final validation loss, {p}:", "",
                  "| width | " + " | ".join(f"lr {lr:.3g}" for lr in lrs) + " |", "|---" * (1 + len(lrs)) + "|"]
        for w in sorted(by_w):
            best = summary["best"][p][w]["grid"]
            cells = []
            for lr in lrs:
                text = _fmt_loss(by_w[w][lr]) if lr in by_w[w] else ""
                cells.append(f"**{text}**" if lr == best else text)
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(table)
    finite = [v for by_w in table.values() for by_lr in by_w.values() for v in by_lr.values() if math.isfinite(v)]
    low = min(finite)
    fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4), sharey=True, squeeze=False)
    for ax, param in zip(axes[0], params):
        for width, by_lr in sorted(table[param].items()):
            lrs = sorted(by_lr)
            line, = ax.plot(lrs, [by_lr[lr] if math.isfinite(by_lr[lr]) else float("nan") for lr in lrs],
                            marker="o", label=f"width {width}")
            best = summary["best"][param][width]
            ax.plot([best["grid"]], [best["loss"]], marker="*", markersize=14, color=line.get_color())
        ax.set_xscale("log", base=2)
        # Diverged or far-off runs would flatten the interesting part of the curves.
        ax.set_ylim(low - 0.05, low + 1.0)
        ax.set_xlabel("learning rate (μP: base-width LR)" if param == "mup" else "learning rate")
        ax.set_title({"sp": "standard parametrization", "mup": "μP"}.get(param, param))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final validation loss")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs_dir: str, out_dir: str, title: str = "") -> tuple[dict, str]:
    """Collect the runs, write transfer.{json,md,png} to out_dir; returns (summary, markdown text)."""
    table = collect(Path(runs_dir))
    summary = summarise(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finite = lambda v: v if v is None or math.isfinite(v) else None  # noqa: E731  (JSON has no inf)
    serialisable = {"losses": {p: {str(w): {repr(lr): finite(v) for lr, v in by_lr.items()} for w, by_lr in by_w.items()}
                               for p, by_w in table.items()},
                    "best": {p: {str(w): {k: finite(v) for k, v in b.items()} for w, b in by_w.items()}
                             for p, by_w in summary["best"].items()},
                    "shift": summary["shift"], "title": title}
    (out / "transfer.json").write_text(json.dumps(serialisable, indent=1))
    text = markdown(table, summary, title)
    (out / "transfer.md").write_text(text)
    try:
        plot(table, summary, out / "transfer.png", title)
    except ImportError:
        text += "\n(matplotlib is not installed: no transfer.png)\n"
    return summary, text
