"""The few-shot figure: accuracy against shots, a panel per dataset and the average, a line per method."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dapt_lightning.experiments.sweep.results import Cell, FewShot


def _panel_cells(fewshot: FewShot, label: str, dataset: str | None) -> dict[int, Cell]:
    """``{shots: cell}`` of one line: a dataset's cells, or (``dataset`` None) the complete averages."""
    cells = {}
    for shots in fewshot.shots:
        cell = fewshot.cell(label, dataset, shots) if dataset else fewshot.average(label, shots)[0]
        if cell is not None:
            cells[shots] = cell
    return cells


def draw_fewshot(fewshot: FewShot) -> Figure | None:
    """Accuracy against shots, one panel per dataset plus the average, one line per method with a band of
    ± one std over seeds (where there are two or more); zero-shot CLIP is a dashed level. None: no trained runs.

    The average panel shows only complete averages (every dataset, same seeds), as the tables do.
    """
    shots = [k for k in fewshot.shots if k]
    if not shots:
        return None
    # A bare Figure renders with Agg when saved: no pyplot, so no global backend switch and nothing to close.
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    panels: list[str | None] = [*fewshot.datasets, None]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(3.4 * columns, 2.9 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, dataset in zip(axes.flat, panels, strict=False):
        for index, label in enumerate(fewshot.labels):
            colour = colours[index % len(colours)]
            cells = _panel_cells(fewshot, label, dataset)
            if not cells:
                continue
            if fewshot.untrained(label):  # zero-shot: one value, the same at every shot count
                level = next(iter(cells.values())).mean
                ax.axhline(level, color=colour, linestyle="--", linewidth=1.2, label=label)
                continue
            xs = sorted(cells)
            means = [cells[k].mean for k in xs]
            spreads = [cells[k].std or 0.0 for k in xs]
            ax.plot(xs, means, marker="o", markersize=3.5, color=colour, label=label)
            if any(cells[k].std is not None for k in xs):
                lower = [m - s for m, s in zip(means, spreads, strict=True)]
                upper = [m + s for m, s in zip(means, spreads, strict=True)]
                ax.fill_between(xs, lower, upper, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(dataset or f"Average over {len(fewshot.datasets)} datasets", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    legend = {}  # every method once, whichever panels it appears in
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def fewshot_figure(fewshot: FewShot, path: Path) -> Path | None:
    """Save :func:`draw_fewshot`'s figure as a PNG at ``path``; None when there are no trained runs."""
    fig = draw_fewshot(fewshot)
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
