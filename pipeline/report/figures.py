"""Report figures: each function draws one matplotlib/seaborn figure and returns it as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly (no pyplot state,
nothing to close, no display needed). Sizes are ~640 px wide at 100 dpi.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
# One colour per split / method, used by every figure.
TEST_COLOUR = "#1d4ed8"
VAL_COLOUR = "#9ca3af"
CASCADE_COLOUR = "#1d4ed8"
SEGMENTER_COLOUR = "#d97706"
POINT_COLOUR = "#dc2626"
SPLIT_STYLE = {"test": {"color": TEST_COLOUR, "ls": "-", "lw": 2.0},
               "val": {"color": VAL_COLOUR, "ls": "--", "lw": 1.5}}
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
      "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
      "font.family": "sans-serif"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes at the report's resolution."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def roc_figure(curves: Mapping[str, pd.DataFrame], labels: Mapping[str, str],
               points: Mapping[str, tuple[float, float]], threshold: float | None) -> bytes:
    """ROC curves (columns fpr, tpr) per split; `points` maps split -> (fpr, tpr) at the threshold."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(4.8, 4.2)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#d1d5db", lw=1, ls=":", label="chance")
        for split, df in curves.items():
            ax.plot(df.fpr, df.tpr, label=labels.get(split, split), **SPLIT_STYLE.get(split, {}))
        shown = False
        for split, (x, y) in points.items():
            if _finite(x) and _finite(y):
                ax.plot([x], [y], "o", ms=8 if split == "test" else 6, mfc=POINT_COLOUR if split == "test" else "white",
                        mec=POINT_COLOUR, mew=1.5, zorder=5,
                        label=None if shown else f"operating point (t = {threshold:.3f})" if _finite(threshold)
                        else "operating point")
                shown = True
        _unit_axes(ax, "False-positive rate (1 − specificity)", "True-positive rate (sensitivity)")
        ax.set_title("ROC, slice level")
        ax.legend(loc="lower right", frameon=True)
        return to_png(fig)


def pr_figure(curves: Mapping[str, pd.DataFrame], labels: Mapping[str, str],
              points: Mapping[str, tuple[float, float]], prevalence: float | None) -> bytes:
    """Precision-recall curves (columns recall, precision); `points`: split -> (recall, precision)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(4.8, 4.2)
        ax = fig.add_subplot()
        if _finite(prevalence):
            ax.axhline(prevalence, color="#d1d5db", lw=1, ls=":", label=f"chance (prevalence {prevalence:.2f})")
        for split, df in curves.items():
            ax.plot(df.recall, df.precision, label=labels.get(split, split), drawstyle="steps-post",
                    **SPLIT_STYLE.get(split, {}))
        shown = False
        for split, (x, y) in points.items():
            if _finite(x) and _finite(y):
                ax.plot([x], [y], "o", ms=8 if split == "test" else 6, mfc=POINT_COLOUR if split == "test" else "white",
                        mec=POINT_COLOUR, mew=1.5, zorder=5, label=None if shown else "operating point")
                shown = True
        _unit_axes(ax, "Recall (sensitivity)", "Precision (PPV)")
        ax.set_title("Precision–recall, slice level")
        ax.legend(loc="lower left", frameon=True)
        return to_png(fig)


def confusion_figure(panels: Sequence[tuple[str, Mapping[str, float]]]) -> bytes:
    """Confusion-matrix heatmaps, one per (title, {tp, fp, fn, tn}); cells show count and row %."""
    import matplotlib
    import seaborn as sns

    with matplotlib.rc_context(RC):
        fig = _figure(3.2 * len(panels), 3.0)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, c) in zip(axes, panels, strict=True):
            counts = np.array([[c.get("tp", 0), c.get("fn", 0)], [c.get("fp", 0), c.get("tn", 0)]], float)
            counts = np.nan_to_num(counts)
            rows = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
            annot = np.array([[f"{int(n)}\n{100 * s:.1f}%" for n, s in zip(r, q, strict=True)] for r, q in zip(counts, share, strict=True)])
            sns.heatmap(share, ax=ax, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False,
                        linewidths=1, linecolor="white", square=True, annot_kws={"fontsize": 10},
                        xticklabels=["tumour", "no tumour"], yticklabels=["tumour", "no tumour"])
            ax.set_xlabel("Predicted")
            ax.set_ylabel("Actual")
            ax.set_title(title)
            ax.grid(False)
            ax.tick_params(length=0)
        return to_png(fig)


def calibration_figure(curves: Mapping[str, pd.DataFrame], labels: Mapping[str, str]) -> bytes:
    """Reliability diagram (mean_predicted vs fraction_positive) over a histogram of bin counts."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(4.8, 4.6)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.plot([0, 1], [0, 1], color="#d1d5db", lw=1, ls=":", label="perfectly calibrated")
        width = 0.08 / max(len(curves), 1)  # bins are 0.1 wide (10 bins) or narrower
        for i, (split, df) in enumerate(curves.items()):
            style = SPLIT_STYLE.get(split, {})
            top.plot(df.mean_predicted, df.fraction_positive, marker="o", ms=4, label=labels.get(split, split), **style)
            if "count" in df:
                bottom.bar(df.mean_predicted + (i - 0.5 * (len(curves) - 1)) * width, df["count"], width=width,
                           color=style.get("color"), alpha=0.8)
        _unit_axes(top, None, "Fraction with tumour")
        top.set_title("Calibration, slice level")
        top.legend(loc="upper left", frameon=True)
        bottom.set_xlabel("Mean predicted probability")
        bottom.set_ylabel("Slices")
        bottom.set_xlim(-0.02, 1.02)
        return to_png(fig)


def dice_figure(patients: pd.DataFrame, slices: pd.DataFrame) -> bytes:
    """Dice per patient (cascade vs segmenter on all slices) and per tumour slice, box + strip plots.

    patients: columns dice_cascade, dice_segmenter_all (tumour patients only).
    slices: columns dice_cascade, dice_segmenter (tumour slices only).
    """
    import matplotlib
    import seaborn as sns

    palette = {"Cascade": CASCADE_COLOUR, "Segmenter,\nall slices": SEGMENTER_COLOUR, "Segmenter": SEGMENTER_COLOUR}
    with matplotlib.rc_context(RC):
        fig = _figure(6.4, 3.4)
        axes = fig.subplots(1, 2, sharey=True)
        panels = [
            (axes[0], patients, {"dice_cascade": "Cascade", "dice_segmenter_all": "Segmenter,\nall slices"},
             f"Per patient (n = {len(patients)})"),
            (axes[1], slices, {"dice_cascade": "Cascade", "dice_segmenter": "Segmenter"},
             f"Per tumour slice (n = {len(slices)})"),
        ]
        for ax, df, columns, title in panels:
            present = {k: v for k, v in columns.items() if k in df}
            long = df[list(present)].rename(columns=present).melt(var_name="method", value_name="dice").dropna()
            ax.set_title(title)
            if long.empty:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#6b7280")
                continue
            order = [v for v in present.values() if v in set(long.method)]
            sns.boxplot(data=long, x="method", y="dice", hue="method", order=order, palette=palette, ax=ax,
                        width=0.5, fliersize=0, boxprops={"alpha": 0.35}, legend=False)
            sns.stripplot(data=long, x="method", y="dice", hue="method", order=order, palette=palette, ax=ax,
                          size=3 if len(df) > 60 else 4, alpha=0.8, jitter=0.18, legend=False)
            ax.set_xlabel("")
            ax.set_ylabel("Dice")
            ax.set_ylim(-0.03, 1.03)
        return to_png(fig)


def training_figure(curves: Mapping[str, Mapping[str, pd.DataFrame]], learning_rate: pd.DataFrame | None,
                    best_step: int | None, title: str) -> bytes:
    """Training curves: one panel per metric (train solid, val dashed), plus the learning rate.

    curves: metric -> {"train"|"val": DataFrame with columns step, <metric>}.
    best_step: the dvclive step (0-based epoch) whose weights were kept, marked on every panel.
    """
    import matplotlib

    names = list(curves)[:3]
    n_panels = len(names) + (learning_rate is not None and not learning_rate.empty)
    with matplotlib.rc_context(RC):
        cols = 2 if n_panels > 1 else 1
        rows = math.ceil(max(n_panels, 1) / cols)
        fig = _figure(6.4, 2.4 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        fig.suptitle(title, fontsize=10, x=0.02, ha="left")
        for ax in axes[n_panels:]:
            ax.set_visible(False)
        style = {"train": {"color": TEST_COLOUR, "ls": "-"}, "val": {"color": SEGMENTER_COLOUR, "ls": "--"}}
        for ax, name in zip(axes, names, strict=False):  # spare axes are hidden
            for split, df in curves[name].items():
                ax.plot(df.step + 1, df[name], marker="o", ms=3, lw=1.5, label=split, **style.get(split, {}))
            ax.set_title(name.replace("_", " "))
            ax.set_xlabel("epoch")
            _mark_best(ax, best_step)
        if names:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside upper right", ncols=2, frameon=False)
        if n_panels > len(names) and learning_rate is not None:
            ax = axes[len(names)]
            column = [c for c in learning_rate.columns if c != "step"][0]
            ax.plot(learning_rate.step + 1, learning_rate[column], color="#6b7280", marker="o", ms=3, lw=1.5)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))  # linear: log ticks are slow to draw
            ax.set_ylim(bottom=0)
            ax.set_title("learning rate")
            ax.set_xlabel("epoch")
            _mark_best(ax, best_step)
        if not n_panels:
            axes[0].set_visible(True)
            axes[0].text(0.5, 0.5, "no training curves", ha="center", va="center", transform=axes[0].transAxes)
        return to_png(fig)


def _mark_best(ax: object, best_step: int | None) -> None:
    if best_step is not None:
        ax.axvline(best_step + 1, color="#9ca3af", lw=1, ls=":", zorder=0)


def _unit_axes(ax: object, xlabel: str | None, ylabel: str | None) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    if ylabel:
        ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
        ax.set_aspect("equal", adjustable="box")
