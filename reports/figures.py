"""Figures, rendered with matplotlib's Agg backend and embedded as base64 PNG.

One colour per method, the same in every figure (a method's place in the sorted list of
registered names decides it; the dense model is always black)."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from .columns import UTILITY, headline_gap  # noqa: E402
from .tables import Comparison, Row  # noqa: E402

DENSE_COLOUR = "#000000"


def palette(methods) -> dict[str, str]:
    """Method -> colour, stable across reports: registered methods first, in name order."""
    try:
        from fairsqueeze.methods import METHODS

        known = list(METHODS.names())
    except Exception:  # a report must render even where plugins fail to import
        known = []
    names = [m for m in sorted(set(known) | {m for m in methods if isinstance(m, str)}) if m != "dense"]
    # tab10's ten distinct hues first; tab20 (paired light/dark hues) only beyond ten methods
    colours = sns.color_palette("tab10" if len(names) <= 10 else "tab20", n_colors=max(len(names), 1)).as_hex()
    return {"dense": DENSE_COLOUR, **{m: colours[i % len(colours)] for i, m in enumerate(names)}}


def to_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # fixed margins: a "tight" box costs a second draw
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of (unfairness ↓, utility ↑), by unfairness."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    front, best = [], -np.inf
    for i in order:
        if points[i, 1] > best:
            front.append(i)
            best = points[i, 1]
    return np.array(front, dtype=int)


def _xy(rows: list[Row], x: str, y: str):
    pts = np.array([[r.values[x].mean, r.values[y].mean] for r in rows], dtype=float)
    err = np.array([[r.values[x].half_width, r.values[y].half_width] for r in rows], dtype=float)
    return pts, np.nan_to_num(err)


def _scatter(ax, comp: Comparison, colours: dict[str, str], x: str, front: bool) -> None:
    by_method: dict[str, list[Row]] = {}
    for r in comp.rows:
        by_method.setdefault(r.method, []).append(r)
    for method, rows in by_method.items():
        pts, err = _xy(rows, x, UTILITY)
        ok = np.isfinite(pts).all(axis=1)
        if not ok.any():
            continue
        colour = colours.get(method, "#888888")
        ranked = np.array([r.ranked for r in rows])
        dense = method == "dense"
        for mask, face in ((ok & ranked, colour), (ok & ~ranked, "none")):
            if mask.any():
                ax.errorbar(pts[mask, 0], pts[mask, 1], xerr=err[mask, 0], yerr=err[mask, 1], fmt="*" if dense else "o",
                            ms=14 if dense else 7, color=colour, mfc=face, ecolor=colour, elinewidth=1, capsize=2,
                            label=(method if face != "none" else f"{method} (flagged)"), zorder=3)
        keep = ok & ranked
        if front and keep.sum() > 1:
            sub = pts[keep]
            idx = pareto_front(sub)
            ax.step(sub[idx, 0], sub[idx, 1], where="post", color=colour, lw=1.2, alpha=0.8, zorder=2)


def _axes():
    """One plot with room on the right for the legend."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    fig.subplots_adjust(left=0.11, right=0.72, bottom=0.12, top=0.92)
    return fig, ax


def pareto_plot(comp: Comparison, colours: dict[str, str]) -> str:
    """Utility against the headline unfairness gap: seed CIs as error bars, the dense model
    as a black star, each method's non-dominated front as a step line; flagged
    (degenerate / no-effect) points hollow."""
    gap = headline_gap(comp.num_classes)
    fig, ax = _axes()
    _scatter(ax, comp, colours, gap, front=True)
    ax.set_xlabel(f"{gap} (lower is fairer)")
    ax.set_ylabel(f"{UTILITY} (higher is better)")
    ax.set_title(f"{comp.task_label} · {comp.model}: utility vs unfairness", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_png(fig)


def cost_plot(comp: Comparison, colours: dict[str, str]) -> str:
    """Utility against the compression ratio."""
    fig, ax = _axes()
    _scatter(ax, comp, colours, "compression_ratio", front=False)
    ax.set_xlabel("compression ratio (higher is smaller)")
    ax.set_ylabel(UTILITY)
    ax.set_title(f"{comp.task_label} · {comp.model}: utility vs compression", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_png(fig)


def swept_parameters(comp: Comparison) -> list[str]:
    return sorted({p for r in comp.rows for p in r.sweep})


def ablation_plot(comp: Comparison, param: str, colours: dict[str, str]) -> str:
    """The utility and the headline gap against one swept parameter: one line per method
    entry (and per value of any other parameter swept with it)."""
    gap = headline_gap(comp.num_classes)
    lines: dict[tuple, list[Row]] = {}
    for r in comp.rows:
        if param in r.sweep:
            others = tuple(sorted((k, str(v)) for k, v in r.sweep.items() if k != param))
            lines.setdefault((r.entry_label, r.method, others), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.88, wspace=0.25)
    numeric = all(isinstance(r.sweep[param], (int, float)) for rows in lines.values() for r in rows)
    for (entry_label, method, others), rows in sorted(lines.items(), key=lambda kv: str(kv[0])):
        rows = sorted(rows, key=lambda r: r.sweep[param] if numeric else str(r.sweep[param]))
        xs = [r.sweep[param] if numeric else str(r.sweep[param]) for r in rows]
        name = entry_label + ("" if not others else " " + ",".join(f"{k}={v}" for k, v in others))
        for ax, key in zip(axes, (UTILITY, gap)):
            ys = [r.values[key].mean for r in rows]
            es = np.nan_to_num([r.values[key].half_width for r in rows])
            ax.errorbar(xs, ys, yerr=es, marker="o", color=colours.get(method, "#888888"), capsize=2, label=name)
    for ax, key in zip(axes, (UTILITY, gap)):
        ax.set_xlabel(param)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{comp.task_label} · {comp.model}: sweep of {param}", fontsize=9)
    return to_png(fig)
