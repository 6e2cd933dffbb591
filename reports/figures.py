"""Figures, rendered with matplotlib's Agg backend and embedded as base64 PNG.

One colour per method, the same in every figure (``palette``; the dense model is black)."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
import numpy as np  # noqa: E402

from .columns import UTILITY, headline_gap  # noqa: E402
from .tables import Comparison, Row  # noqa: E402

LABEL_STEP = 0.07  # axes fraction between two stacked policy names in the tuning figure


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


def tuning_figure(studies, colours: dict[str, str]):
    """The tuning studies of one (task, model) on validation, one panel per tuned entry on
    shared axes (utility → right, unfairness ↓ down is fairer): every complete trial of the
    other entries as faint grey context, the entry's own trials faint in its method's colour
    (hollow: flagged, x: infeasible), each study's Optuna Pareto front (``best_trials``) as
    a step line (one line style per seed) and the trials the policies selected ringed and
    named. A front of three objectives (with the compression ratio) is drawn as points only:
    its projection onto two axes is not a staircase."""
    from matplotlib.lines import Line2D

    entries: dict[str, list] = {}
    for study in studies:
        entries.setdefault(study.attrs["label"], []).append(study)
    utility, unfairness = studies[0].objectives[:2]
    ncols = min(len(entries), 2)
    nrows = -(-len(entries) // ncols)
    height = 4.0 * nrows + 1.0  # inches: the panels, then the legend
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.0 * ncols, height), sharex=True, sharey=True, squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.4 / height, bottom=1.25 / height, hspace=0.3, wspace=0.06)
    seeds = sorted({int(s.attrs["seed"]) for s in studies})
    dashes = dict(zip(seeds, ["-", "--", ":", "-."] * len(seeds)))
    outline = [patheffects.withStroke(linewidth=3.2, foreground="#444444")]  # light method colours stay visible
    notes: dict = {}  # axes -> [(x, y, text)] of the selected trials
    for ax, (label, mine) in zip(axes.flat, entries.items()):
        colour = colours.get(mine[0].attrs["method"], "#888888")
        for other in studies:
            if other.attrs["label"] != label and not other.trials.empty:
                ax.scatter(other.trials["utility"], other.trials["unfairness"], s=14, marker="+", color="#b0b0b0",
                           lw=0.8, zorder=1)
        for study in mine:
            t = study.trials
            if t.empty:
                continue
            feasible, flagged = t["feasible"].astype(bool), t["flagged"].astype(bool)
            ok, hollow, cross = feasible & ~flagged, feasible & flagged, ~feasible
            ax.scatter(t.loc[ok, "utility"], t.loc[ok, "unfairness"], s=24, color=colour, alpha=0.6, ec="#555555",
                       lw=0.4, zorder=2)
            ax.scatter(t.loc[hollow, "utility"], t.loc[hollow, "unfairness"], s=24, facecolors="none",
                       edgecolors=colour, zorder=2)
            ax.scatter(t.loc[cross, "utility"], t.loc[cross, "unfairness"], s=28, marker="x", color=colour, zorder=2)
            seed = int(study.attrs["seed"])
            front = study.front.sort_values([utility, unfairness])
            ax.plot(front[utility], front[unfairness], color=colour, ls=dashes[seed] if len(study.directions) == 2 else "",
                    drawstyle="steps-pre", marker="o", ms=5, mec="#444444", lw=1.6, path_effects=outline, zorder=3,
                    gid=f"front:{study.name}")
            by_trial: dict[int, list[str]] = {}
            for policy, number in sorted(study.selected.items()):
                if number is not None:
                    by_trial.setdefault(number, []).append(policy)
            at = t.set_index("number")
            for number, policies in sorted(by_trial.items()):
                x, y = at.loc[number, "utility"], at.loc[number, "unfairness"]
                ax.scatter([x], [y], s=120, facecolors="none", edgecolors="#222222", lw=1.3, zorder=4)
                text = (f"s{seed}: " if len(seeds) > 1 else "") + ", ".join(policies)
                notes.setdefault(ax, []).append((x, y, text))
        trials = sum(len(s.trials) for s in mine)
        ax.set_title(f"{label} · {mine[0].budget} trials x {len(mine)} seed(s), {trials} complete", fontsize=10,
                     fontweight="bold")
        ax.tick_params(labelsize=8.5)
        ax.grid(alpha=0.3)
    # the policy names stand in a column above the trials, each tied to its trial by a thin line
    ys = np.concatenate([s.trials["unfairness"].to_numpy(float) for s in studies])
    ys = ys[np.isfinite(ys)]
    stack = max((len(v) for v in notes.values()), default=0)
    if len(ys) and stack:
        low, high = ys.min(), ys.max()
        span = (high - low) or 1.0
        room = min(0.09 + LABEL_STEP * stack, 0.55)  # the top fraction of each panel kept for the names
        axes.flat[0].set_ylim(low - 0.04 * span, low + 1.04 * span / (1 - room))
    for ax, marks in notes.items():
        for k, (x, y, text) in enumerate(sorted(marks, key=lambda m: -m[0])):  # lines that never cross
            # a line leaves its name's right end; names drawn later (lower) cover the lines of those above
            ax.annotate(text, (x, y), xytext=(0.02, 0.96 - LABEL_STEP * k), textcoords="axes fraction", fontsize=8.5,
                        va="top", color="#222222", zorder=5, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"},
                        arrowprops={"arrowstyle": "-", "color": "#888888", "lw": 0.7, "shrinkB": 6, "relpos": (1, 0.5)})
    for ax in axes.flat[len(entries):]:
        ax.set_visible(False)
    for ax in axes.flat[max(len(entries) - ncols, 0):len(entries)]:  # the lowest panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel(f"{utility} on validation (higher is better)", fontsize=9.5)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{unfairness} on validation (lower is fairer)", fontsize=9.5)
    grey = "#555555"
    handles = [
        Line2D([], [], ls="", marker="+", color="#b0b0b0", label="trial of another entry"),
        Line2D([], [], ls="", marker="o", color=grey, alpha=0.6, label="trial (feasible)"),
        Line2D([], [], ls="", marker="o", mfc="none", color=grey, label="flagged trial (degenerate / no effect)"),
        Line2D([], [], ls="", marker="x", color=grey, label="infeasible trial (constraint)"),
        *[Line2D([], [], ls=dashes[s], marker="o", ms=5, mec="#444444", lw=1.6, color=grey, path_effects=outline,
                 label=f"Optuna Pareto front, seed {s}") for s in seeds],
        Line2D([], [], ls="", marker="o", ms=10, mfc="none", color="#222222", label="selected by the named policy"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)
    return fig


def tuning_plot(studies, colours: dict[str, str]) -> str:
    return to_png(tuning_figure(studies, colours))
