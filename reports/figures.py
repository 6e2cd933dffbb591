"""Figures, rendered with matplotlib's Agg backend and embedded as base64 PNG.

One colour per method, the same in every figure (``palette``; the dense model is black)."""
from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
import functools
from pathlib import Path
from typing import Callable

import numpy as np  # noqa: E402

from .columns import DELTA_GAP, DELTA_UTILITY, UTILITY, headline_gap  # noqa: E402
from .hypervolume import pareto_front  # noqa: E402
from .tables import Comparison, Row  # noqa: E402

LABEL_STEP = 0.07  # axes fraction between two stacked policy names in the tuning figure
SCREEN_DPI = 100  # CSS pixels per inch a figure is shown at; it is drawn at twice that
MIN_FONT = 8  # points: 8 pt at 100 dpi is 11 CSS px
MARKERS = "osD^vP<>Xph"  # one per entry of a method, in entry order
FLAGGED = "#888888"
MIN_SPAN = 0.02  # the narrowest axis range, in metric units
LEGEND_ROW_IN = 0.2  # inches per legend row at 9 pt
TITLE_CHARS = 52  # the longest title kept on one line over the plot
LEGEND_CHARS = 26  # the longest legend line kept whole beside a 7.4-inch plot at 9 pt
NOTE_IN = 0.45  # inches: the two lines of the "labels left out" note and a gap above them
NOTE_BOTTOM = 0.03  # figure fraction under the note
LABEL_ALL = 30  # up to this many rows, every point is labelled; past it, the points on a front
# the range a plotted value can take: accuracy and every gap are rates
FEASIBLE = {UTILITY: (0.0, 1.0), "gap": (0.0, 1.0)}



@functools.cache
def pyplot():
    """matplotlib's pyplot on the Agg backend with the pages' fonts, imported when the first
    figure is drawn: a page command that fails early, or draws nothing, never pays for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
                         "ytick.labelsize": 9, "legend.fontsize": 9, "svg.fonttype": "none"})
    return plt


class Png(str):
    """Base64 PNG drawn at 2x, with the size it is shown at on screen (CSS px)."""

    width: int
    height: int

    @classmethod
    def of(cls, data: bytes) -> "Png":
        png = cls(base64.b64encode(data).decode("ascii"))
        # the IHDR chunk holds the pixel size; the screen size is half of it
        png.width, png.height = (int.from_bytes(data[i:i + 4], "big") // 2 for i in (16, 20))
        return png


def png_bytes(fig) -> bytes:
    plt = pyplot()
    buf = io.BytesIO()
    # fixed margins (a "tight" box costs a second draw); light compression: encoding is most of a save
    fig.savefig(buf, format="png", dpi=2 * SCREEN_DPI, pil_kwargs={"compress_level": 2})
    plt.close(fig)
    return buf.getvalue()


def to_png(fig) -> Png:
    return Png.of(png_bytes(fig))


# the drawing code is part of what a cached figure depends on: a new version redraws
CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@dataclass(frozen=True)
class FigureFile:
    """A figure written beside the page: its path relative to the page and the size it is
    shown at (CSS px; the PNG holds twice as many pixels)."""

    src: str
    width: int
    height: int


class FigureCache:
    """The page's figures as PNG files in ``folder``, named by the content they draw (a
    digest of the plotted values, labels, flags, colours and the drawing code): rebuilding a
    page redraws only the figures whose data changed, and the page loads them as files (a
    store of 10,000 runs has a hundred figures). Files the last build did not use are
    removed by :meth:`prune`."""

    def __init__(self, folder: Path, relative: str):
        self.folder, self.relative = Path(folder), relative
        self.used: set[str] = set()
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, kind: str, content, draw: Callable[[], object]) -> FigureFile:
        key = hashlib.sha256(repr((CODE, kind, content)).encode()).hexdigest()[:32]
        self.used.add(key)
        path = self.folder / f"{key}.png"
        if path.exists():
            with path.open("rb") as f:
                head = f.read(24)
        else:
            data = png_bytes(draw())
            path.write_bytes(data)
            head = data[:24]
        # the IHDR chunk holds the pixel size; the screen size is half of it
        width, height = (int.from_bytes(head[i:i + 4], "big") // 2 for i in (16, 20))
        return FigureFile(f"{self.relative}/{key}.png", width, height)

    def prune(self) -> None:
        for path in self.folder.glob("*.png"):
            if path.stem not in self.used:
                path.unlink()


def content(comp: Comparison, colours: dict[str, str]) -> tuple:
    """What a comparison's figures draw, as a canonical (ordered) value for the cache key."""
    rows = tuple(
        (r.label, r.method, r.entry_label, tuple(sorted((k, repr(v)) for k, v in r.sweep.items())),
         tuple(sorted((k, v) for k, v in r.flags.items() if v)),
         tuple((k, repr(e.mean), repr(e.half_width)) for k, e in sorted(r.values.items())))
        for r in comp.rows)
    return (comp.task_key, comp.task_label, comp.model, comp.num_classes, rows,
            tuple(sorted((m, c) for m, c in colours.items() if any(r.method == m for r in comp.rows))))


def feasible_limits(values, bounds: tuple[float, float] | None, pad: float = 0.08) -> tuple[float, float]:
    """Axis limits around the plotted values, padded, at least ``MIN_SPAN`` wide, never past
    what the metric can take."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    low, high = (v.min(), v.max()) if len(v) else bounds or (0.0, 1.0)
    span = max(high - low, MIN_SPAN)  # a cloud of nearly equal points is not blown up into noise
    low, high = low - pad * span - (span - (high - low)) / 2, high + pad * span + (span - (high - low)) / 2
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return float(low), float(high)


def _short(row: Row) -> str:
    """A point's label: its sweep values, or its entry when nothing is swept."""
    if row.sweep:
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.sweep.items())
    return row.label if row.label != row.method else ""


def _by_method(comp: Comparison) -> dict[str, list[Row]]:
    by_method: dict[str, list[Row]] = {}
    for r in comp.rows:
        by_method.setdefault(r.method, []).append(r)
    return by_method


def _points(ax, comp: Comparison, colours: dict[str, str], x: str, y: str, front: bool, spread: bool = True,
            labels: bool = True) -> tuple[list[float], list[float]]:
    """Each row as a point (mean over seeds) in its method's colour, one marker per entry,
    flagged rows hollow and grey-edged; the seed spread (95 % CI) as thin faint bars behind
    the points; each method's front of unflagged rows as one step line; the dense model a
    black star. Points are labelled by their sweep values: all of them in a small figure,
    those on a front in a crowded one. Returns the points' coordinates, for the limits, and
    their labels, placed by :func:`place_labels` once the limits are set. The dense model
    post-processed (``dense+STEP``, e.g. per-group thresholds) is a hollow star: the bar a
    compression method's fairness is read against. One artist per
    (method, entry, flagged): a figure of a thousand rows draws as fast as one of ten."""
    xs, ys, names = [], [], []
    crowded = len(comp.rows) > LABEL_ALL
    for method, rows in _by_method(comp).items():
        colour = colours.get(method, FLAGGED)
        dense = method == "dense" or method.startswith("dense+")
        hollow = method != "dense" and dense
        px = np.array([r.values[x].mean for r in rows], dtype=float)
        py = np.array([r.values[y].mean for r in rows], dtype=float)
        ok = np.isfinite(px) & np.isfinite(py)
        if not ok.any():
            continue
        ex = np.array([np.nan_to_num(r.values[x].half_width) if spread else 0.0 for r in rows])
        ey = np.array([np.nan_to_num(r.values[y].half_width) if spread else 0.0 for r in rows])
        xs += list(px[ok])  # the points decide the limits: a wide interval is cut at the axes, never
        ys += list(py[ok])  # squeezes the points into a corner
        if spread and (ex[ok].any() or ey[ok].any()):
            ax.errorbar(px[ok], py[ok], xerr=ex[ok], yerr=ey[ok], fmt="none", ecolor=colour, elinewidth=0.7, alpha=0.4,
                        capsize=0, zorder=1)
        ranked = np.array([r.ranked for r in rows])
        entries = list(dict.fromkeys(r.entry_label for r in rows))
        entry = np.array([entries.index(r.entry_label) for r in rows])
        for e in range(len(entries)):
            marker = "*" if dense else MARKERS[e % len(MARKERS)]
            for flagged in (False, True):
                mask = ok & (entry == e) & (ranked != flagged)
                if mask.any():
                    ax.scatter(px[mask], py[mask], s=180 if dense else 46, marker=marker,
                               facecolors="none" if flagged or hollow else colour,
                               edgecolors=FLAGGED if flagged else colour,
                               linewidths=1.2, zorder=3, gid=f"points:{method}", label="_nolegend_")
        on_front = np.zeros(len(rows), dtype=bool)
        keep = np.flatnonzero(ok & ranked)
        if front and len(keep) > 1:
            idx = keep[pareto_front(np.c_[px[keep], py[keep]])]
            on_front[idx] = True
            ax.step(px[idx], py[idx], where="post", color=colour, lw=1.8, alpha=0.9, zorder=2, gid=f"front:{method}")
        if labels and not dense:
            for i in np.flatnonzero(ok & (on_front | (not crowded))):
                if text := _short(rows[i]):
                    names.append(PointLabel(float(px[i]), float(py[i]), text + ("" if rows[i].ranked else " (flagged)"),
                                            colour if rows[i].ranked else FLAGGED, not on_front[i]))
        ax.scatter([], [], marker="*" if dense else "o", s=80 if dense else 40, facecolors="none" if hollow else colour,
                   edgecolors=colour, label=legend_name(method))
    return xs, ys, names


def legend_name(method: str) -> str:
    """A method's legend entry: a post-processing step goes on a second line when the name
    would not fit beside the plot (``truncated_svd`` / ``+equal_tpr_thresholds``)."""
    return method.replace("+", "\n+") if len(method) > LEGEND_CHARS else method


@dataclass(frozen=True)
class PointLabel:
    x: float
    y: float
    text: str
    colour: str
    priority: int  # 0 first: the points on a front are named before the others


# where a label may stand around its point: (dx, dy) in points, horizontal and vertical alignment
LABEL_SPOTS = [(4, 3, "left", "bottom"), (-4, 3, "right", "bottom"), (4, -3, "left", "top"),
               (-4, -3, "right", "top"), (7, 0, "left", "center"), (-7, 0, "right", "center"),
               (0, 6, "center", "bottom"), (0, -6, "center", "top")]
POINT_RADIUS = 4.0  # pixels (at the figure's own dpi) kept free around every marker


def place_labels(ax, names: list[PointLabel], xs, ys) -> int:
    """Name the points without overlap: each label takes the first spot around its point
    that stays inside the axes and covers no label placed before it and no other marker
    (front points first). A label with no free spot is left out; the point keeps its colour
    and marker, and the table names it. Returns how many were left out. Call it once the
    limits are set: the spots are measured in pixels, on the laid-out text."""
    if not names:
        return 0
    renderer = ax.figure.canvas.get_renderer()
    box = ax.bbox
    markers = ax.transData.transform(np.c_[xs, ys]) if len(xs) else np.empty((0, 2))
    taken: list[tuple[float, float, float, float]] = []
    left_out = 0
    for name in sorted(names, key=lambda n: n.priority):
        x0, y0 = ax.transData.transform((name.x, name.y))
        others = markers[np.hypot(markers[:, 0] - x0, markers[:, 1] - y0) > 1e-6]
        label = ax.annotate(name.text, (name.x, name.y), xytext=(0, 0), textcoords="offset points", fontsize=MIN_FONT,
                            color=name.colour, zorder=4)
        for dx, dy, ha, va in LABEL_SPOTS:
            label.xyann = (dx, dy)
            label.set_horizontalalignment(ha)
            label.set_verticalalignment(va)
            e = label.get_window_extent(renderer)
            rect = (e.x0 - 1, e.y0 - 1, e.x1 + 1, e.y1 + 1)
            inside = e.x0 >= box.x0 and e.x1 <= box.x1 and e.y0 >= box.y0 and e.y1 <= box.y1
            if inside and not any(_overlap(rect, t) for t in taken) and not _covers(rect, others):
                taken.append(rect)
                break
        else:
            label.remove()
            left_out += 1
    return left_out


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _covers(rect, points: np.ndarray) -> bool:
    r = POINT_RADIUS
    return bool(((points[:, 0] > rect[0] - r) & (points[:, 0] < rect[2] + r)
                 & (points[:, 1] > rect[1] - r) & (points[:, 1] < rect[3] + r)).any())


def _axes(width: float = 7.4, height: float = 4.4):
    """One plot with room on the right for the legend of methods."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(width, height))
    fig.subplots_adjust(left=0.11, right=0.68, bottom=0.13, top=0.91)
    return fig, ax


def _fit_legend(ax) -> None:
    """Make the figure taller when its legend of methods, one row each beside the plot, would
    run past the note under it (a suite of 25 methods)."""
    fig = ax.figure
    rows = sum(label.count("\n") + 1 for label in ax.get_legend_handles_labels()[1]) + 1  # the entries, the title
    width, height = fig.get_size_inches()
    # from the figure's top: the margin above the plot, the legend, the note, NOTE_BOTTOM under it
    needed = (LEGEND_ROW_IN * rows + NOTE_IN) / (fig.subplotpars.top - NOTE_BOTTOM)
    if needed > height:
        fig.set_size_inches(width, needed)


def _finish(ax, title: str, xlabel: str, ylabel: str, xs, ys, xbounds, ybounds, names=()) -> None:
    if len(title) > TITLE_CHARS:  # it would run past the figure's left edge: the model goes below
        title = title.replace(" · ", "\n")
        ax.figure.subplots_adjust(top=0.86)
    _fit_legend(ax)  # before the labels are placed: their overlap test works in display units
    ax.set_xlim(*feasible_limits(xs, xbounds))
    ax.set_ylim(*feasible_limits(ys, ybounds))
    if left_out := place_labels(ax, list(names), xs, ys):
        ax.figure.text(0.695, NOTE_BOTTOM, f"{left_out} point label(s) left out\nwhere they would overlap", fontsize=MIN_FONT,
                       color="#555555", va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="method",
              handletextpad=0.3, borderaxespad=0.0)


def pareto_figure(comp: Comparison, colours: dict[str, str]):
    """Utility against the headline unfairness gap: points labelled by their sweep values,
    seed CIs as faint thin bars, each method's non-dominated front as a step line, the
    dense model a black star, flagged (degenerate, no-effect, near-chance) rows hollow."""
    gap = headline_gap(comp.num_classes)
    fig, ax = _axes()
    xs, ys, names = _points(ax, comp, colours, gap, UTILITY, front=True)
    _finish(ax, f"{comp.task_label} · {comp.model}", f"{gap} (lower is fairer)", f"{UTILITY} (higher is better)",
            xs, ys, FEASIBLE["gap"], FEASIBLE[UTILITY], names)
    return fig


def delta_figure(comp: Comparison, colours: dict[str, str]):
    """The paired view: per row, the mean over seeds of its change against the dense model
    of the same seed, accuracy (up is better) against the headline gap (left is fairer).
    The dense model sits at the origin; differences between methods show here first."""
    fig, ax = _axes()
    ax.axhline(0, color="#444444", lw=0.8, zorder=0)
    ax.axvline(0, color="#444444", lw=0.8, zorder=0)
    xs, ys, names = _points(ax, comp, colours, DELTA_GAP, DELTA_UTILITY, front=False, spread=False)
    _finish(ax, "change against the dense model (same seed)",
            f"Δ {headline_gap(comp.num_classes)} (left is fairer)", f"Δ {UTILITY} (up is better)",
            xs + [0.0], ys + [0.0], (-1.0, 1.0), (-1.0, 1.0), names)
    return fig


def cost_figure(comp: Comparison, colours: dict[str, str]):
    """Utility against the compression ratio."""
    fig, ax = _axes()
    xs, ys, names = _points(ax, comp, colours, "compression_ratio", UTILITY, front=False)
    _finish(ax, f"{comp.task_label} · {comp.model}", "compression ratio (higher is smaller)", UTILITY,
            xs, ys, (0.0, np.inf), FEASIBLE[UTILITY], names)
    return fig


def swept_parameters(comp: Comparison) -> list[str]:
    return sorted({p for r in comp.rows for p in r.sweep})


def ablation_figure(comp: Comparison, param: str, colours: dict[str, str]):
    """The utility and the headline gap against one swept parameter: one line per method
    entry (and per value of any other parameter swept with it), seed CIs as a shaded band."""
    plt = pyplot()
    gap = headline_gap(comp.num_classes)
    lines: dict[tuple, list[Row]] = {}
    for r in comp.rows:
        if param in r.sweep:
            others = tuple(sorted((k, str(v)) for k, v in r.sweep.items() if k != param))
            lines.setdefault((r.entry_label, r.method, others), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 3.8))
    fig.subplots_adjust(left=0.07, right=0.80, bottom=0.15, top=0.88, wspace=0.25)
    numeric = all(isinstance(r.sweep[param], (int, float)) for rows in lines.values() for r in rows)
    spans: dict[str, list[float]] = {UTILITY: [], gap: []}
    for n, ((entry_label, method, others), rows) in enumerate(sorted(lines.items(), key=lambda kv: str(kv[0]))):
        rows = sorted(rows, key=lambda r: r.sweep[param] if numeric else str(r.sweep[param]))
        xs = [r.sweep[param] if numeric else str(r.sweep[param]) for r in rows]
        name = entry_label + ("" if not others else " " + ",".join(f"{k}={v}" for k, v in others))
        colour = colours.get(method, FLAGGED)
        for ax, key in zip(axes, (UTILITY, gap)):
            ys = np.array([r.values[key].mean for r in rows], dtype=float)
            es = np.nan_to_num([r.values[key].half_width for r in rows])
            ax.plot(xs, ys, marker=MARKERS[n % len(MARKERS)], color=colour, lw=1.6, label=name, gid=f"line:{name}")
            ax.fill_between(range(len(xs)) if not numeric else xs, ys - es, ys + es, color=colour, alpha=0.15, lw=0)
            spans[key] += list(ys - es) + list(ys + es)
    for ax, key in zip(axes, (UTILITY, gap)):
        ax.set_ylim(*feasible_limits(spans[key], FEASIBLE[UTILITY if key == UTILITY else "gap"]))
        ax.set_xlabel(param)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"{comp.task_label} · {comp.model}: sweep of {param}")
    return fig


def tuning_figure(studies, colours: dict[str, str]):
    """The tuning studies of one (task, model) on validation, one panel per tuned entry on
    shared axes (utility → right, unfairness ↓ down is fairer): every complete trial of the
    other entries as faint grey context, the entry's own trials faint in its method's colour
    (hollow: flagged, x: infeasible), each study's Optuna Pareto front (``best_trials``) as
    a step line (one line style per seed) and the trials the policies selected ringed and
    named. A front of three objectives (with the compression ratio) is drawn as points only:
    its projection onto two axes is not a staircase."""
    from matplotlib import patheffects
    plt = pyplot()
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


OUTCOME_COLOURS = {"supported": "#1a7f37", "contradicted": "#c62828", "no effect ≥ δ": "#1f5fa8",
                   "inconclusive": "#8a6d00", "not exercised": "#6e6e6e", "untested": "#9e9e9e"}


def _shorten(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 1] + "…"


def _cell_name(cell: str) -> str:
    """A cell's "task · model" shortened part by part, so two models of one task stay apart."""
    task, _, model = cell.partition(" · ")
    return f"{_shorten(task, 20)} · {_shorten(model, 14)}" if model else _shorten(cell, 30)


def _bare(text: str) -> str:
    """A label without its options in parentheses: "adult: income / race (split=…)" → "adult: income / race"."""
    return text.split(" (", 1)[0].split("(", 1)[0].strip() or text


def _cell_names(cells) -> list[str]:
    """Names for a figure's cells: task and model without their options where that keeps every
    cell apart (the sensitive attribute stays readable), else :func:`_cell_name`."""
    cells = list(cells)
    bare = []
    for cell in cells:
        task, _, model = cell.partition(" · ")
        bare.append(_shorten(f"{_bare(task)} · {_bare(model)}" if model else _bare(task), 40))
    return bare if len(set(bare)) == len(set(cells)) else [_cell_name(c) for c in cells]


def forest_figure(row: dict, cells):
    """One claim row as a forest plot: each cell's estimate with its 95 % interval (seeds
    as the units), the pooled estimate as a diamond spanning its interval at the level the
    verdict used, the prediction interval for a new cell, the ±δ band and the claimed side."""
    plt = pyplot()
    cells = cells.reset_index(drop=True)
    k = len(cells)
    fig, ax = plt.subplots(figsize=(7.8, 1.5 + 0.26 * (k + 2)))
    delta, colour = float(row["delta"]), OUTCOME_COLOURS.get(row["verdict"], "#444444")
    ax.axvspan(-delta, delta, color="#dde7f3", zorder=0, label=f"±δ = {delta:g}")
    ax.axvline(0, color="#555555", lw=0.8, zorder=1)
    ys = np.arange(k, 0, -1) + 1.0
    for y, c in zip(ys, cells.itertuples()):
        if np.isfinite(c.low):
            ax.plot([c.low, c.high], [y, y], color="#333333", lw=1.2)
        ax.plot(c.effect, y, "s", color="#333333", ms=4)
    values = list(cells["effect"]) + list(cells["low"]) + list(cells["high"]) + [-delta, delta]
    if np.isfinite(row.get("effect", np.nan)):
        low, high, mid = float(row["low"]), float(row["high"]), float(row["effect"])
        ax.fill([low, mid, high, mid], [0.5, 0.8, 0.5, 0.2], color=colour, zorder=3,
                label=f"pooled, level {row['level']:.2g}")
        values += [low, high]
        if np.isfinite(row.get("pred_low", np.nan)):
            ax.plot([row["pred_low"], row["pred_high"]], [-0.1, -0.1], color=colour, lw=1.5, ls="--", zorder=2,
                    label="95 % prediction interval")
            values += [row["pred_low"], row["pred_high"]]
    finite = [v for v in values if np.isfinite(v)]
    lo, hi = min(finite), max(finite)
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    claimed = -1 if row["direction"] == "lower" else 1
    ax.annotate("", xy=(0.5 + 0.22 * claimed, 1.03), xytext=(0.5, 1.03), xycoords="axes fraction",
                arrowprops={"arrowstyle": "->", "color": "#1a7f37"})
    ax.text(0.5 + 0.24 * claimed, 1.03, "claimed side", transform=ax.transAxes, va="center",
            ha="right" if claimed < 0 else "left", fontsize=MIN_FONT, color="#1a7f37")
    names = [f"{name} ({n} s)" for name, n in zip(_cell_names(cells["cell"]), cells["seeds"])]
    ax.set_yticks(list(ys) + [0.5], names + ["pooled"], fontsize=MIN_FONT)
    ax.set_ylim(-0.4, (ys[0] if k else 1) + 0.8)
    ax.xaxis.set_major_locator(plt.MaxNLocator(4))
    ax.set_xlabel(f"Δ {row['metric']} (fair − twin)")
    ax.set_title(f"{row['id']}: {row['verdict']}", fontsize=9, color=colour, pad=14)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=MIN_FONT, frameon=False)
    height = 1.5 + 0.26 * (k + 2)
    fig.subplots_adjust(left=0.41, right=0.75, top=1 - 0.55 / height, bottom=0.55 / height)
    return fig


CELL_COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#8c564b", "#7f7f7f")
CELL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def dose_response_figure(row: dict, curves):
    """One claim row against the compression: per cell, the seeds' mean Δ at each of the fair
    method's configurations with its 95 % band, on a log axis, beside 0, the ±δ band and the
    pooled trend (the change from each cell's lightest to its heaviest compression) in the title."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    delta = float(row["delta"])
    ax.axhspan(-delta, delta, color="#dde7f3", zorder=0, label=f"±δ = {delta:g}")
    ax.axhline(0, color="#555555", lw=0.8, zorder=1)
    groups = list(curves.groupby("cell", sort=True))
    names = dict(zip([cell for cell, _ in groups], _cell_names(cell for cell, _ in groups)))
    for i, (cell, c) in enumerate(groups):
        colour, marker = CELL_COLOURS[i % len(CELL_COLOURS)], CELL_MARKERS[i % len(CELL_MARKERS)]
        c = c.sort_values("dose")
        ax.plot(c["dose"], c["effect"], marker=marker, ms=4, lw=1.3, color=colour, label=names[cell], zorder=3)
        band = np.isfinite(c["low"].to_numpy(float))
        if band.sum() >= 2:
            ax.fill_between(c["dose"][band], c["low"][band], c["high"][band], color=colour, alpha=0.12, lw=0, zorder=2)
        elif band.any():
            ax.errorbar(c["dose"][band], c["effect"][band], yerr=[c["effect"][band] - c["low"][band],
                        c["high"][band] - c["effect"][band]], fmt="none", ecolor=colour, lw=1, zorder=2)
    # the points decide the limits: a band over 2 seeds (t with 1 degree of freedom) is cut at
    # the axes rather than squeezing every curve into a line
    effects = curves["effect"].to_numpy(float)
    low, high = min(effects.min(), -delta), max(effects.max(), delta)
    pad = 0.12 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import LogLocator
    wide = curves["dose"].max() / curves["dose"].min() > 6
    ax.xaxis.set_major_locator(LogLocator(base=2, subs=(1.0,) if wide else (1.0, 1.5)))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.3g}×"))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("compression of the fair run (stored size or nonzero weights, log scale)")
    ax.set_ylabel(f"Δ {row['metric']} (fair − twin)")
    title = f"{row['id']}"
    if isinstance(row.get("trend"), float) and np.isfinite(row["trend"]):
        title += (f"\nlightest → heaviest: {row['trend']:+.4f} [{row['trend_low']:+.4f}, {row['trend_high']:+.4f}]"
                  f" at level {row['trend_level']:.2g}: {row['trend_reading']}")
    ax.set_title(title, fontsize=MIN_FONT + 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=MIN_FONT, frameon=False)
    fig.subplots_adjust(left=0.1, right=0.6, top=0.84, bottom=0.15)
    return fig
