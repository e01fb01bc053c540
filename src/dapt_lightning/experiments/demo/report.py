"""The demo's tables: test accuracy per method (one column per seed, then mean ± std), the gaps between methods,
and DAPT's dispersion before and after tuning."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from dapt_lightning.experiments.demo.dispersion import Dispersion
from dapt_lightning.methods import method_class


def method_title(name: str) -> str:
    """How the tables name a method: its class's ``title`` (``zero-shot CLIP``, ``CoOp+VPT``), else its name."""
    return method_class(name).title or name


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append(indent + "   ".join(cells).rstrip())
    return lines


def gap_rows(accuracy: Mapping[str, Mapping[int, float]], seeds: Sequence[int]) -> list[tuple[str, list[float]]]:
    """DAPT minus every other method, per seed (in points), for the methods that ran."""
    if "dapt" not in accuracy:
        return []
    rows = []
    for method in accuracy:
        if method != "dapt":
            gaps = [100 * (accuracy["dapt"][seed] - accuracy[method][seed]) for seed in seeds]
            rows.append((f"DAPT - {method_title(method)}", gaps))
    return rows


def accuracy_table(
    accuracy: Mapping[str, Mapping[int, float]], macro_f1: Mapping[str, Mapping[int, float]], seeds: Sequence[int]
) -> list[str]:
    """Test accuracy (and macro-F1 for a single seed) per method; then DAPT's gap to every other method.

    ``accuracy[method][seed]`` is a fraction; the table prints percentages and gaps in points. With several seeds
    every row ends with the mean ± sample standard deviation over them.
    """
    names = {method: method_title(method) for method in accuracy}
    if len(seeds) == 1:
        (seed,) = seeds
        zero = accuracy.get("zeroshot", {}).get(seed)
        rows = []
        for method, by_seed in accuracy.items():
            gain = "" if zero is None or method == "zeroshot" else f"{100 * (by_seed[seed] - zero):+.1f}"
            rows.append([names[method], f"{100 * by_seed[seed]:.1f}%", f"{100 * macro_f1[method][seed]:.1f}%", gain])
        lines = _table(["method", "test acc", "macro-F1", "vs zero-shot"], rows)
        others = [(label, gaps[0]) for label, gaps in gap_rows(accuracy, seeds) if "zero-shot" not in label]
        if others:
            lines.append("  " + ", ".join(f"{label}: {gap:+.1f} points" for label, gap in others))
        return lines
    header = ["test accuracy (%)", *[f"seed {seed}" for seed in seeds], "mean ± std"]
    rows = []
    for label, values in [
        *((names[method], [100 * by_seed[seed] for seed in seeds]) for method, by_seed in accuracy.items()),
        *gap_rows(accuracy, seeds),
    ]:
        mean, std = mean_std(values)
        signed = label.startswith("DAPT - ")
        cells = [f"{value:+.1f}" if signed else f"{value:.1f}" for value in values]
        rows.append([label, *cells, f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"])
    return _table(header, rows)


def dispersion_table(dispersion: Mapping[int, tuple[Dispersion, Dispersion]], rbf_t: float) -> list[str]:
    """DAPT's inter- and intra-dispersion before tuning (zero-shot CLIP) and after (DAPT), per seed."""
    seeds = list(dispersion)
    labels = {
        "inter": f"inter: mean exp(-{rbf_t:g} |w_m - w_n|^2) over class text pairs",
        "intra": "intra: MSE of image features to class prototypes",
    }
    if len(seeds) == 1:
        before, after = dispersion[seeds[0]]
        rows = [
            [label, f"{getattr(before, name):.4f}", f"{getattr(after, name):.4f}"] for name, label in labels.items()
        ]
        return _table(["DAPT's dispersion on the test set", "before (zero-shot)", "after (DAPT)"], rows)
    rows = []
    for name, label in labels.items():
        for index, when in enumerate(("before", "after")):
            values = [getattr(dispersion[seed][index], name) for seed in seeds]
            mean, std = mean_std(values)
            rows.append([f"{label.split(':')[0]} {when}", *(f"{v:.4f}" for v in values), f"{mean:.4f} ± {std:.4f}"])
    header = ["DAPT's dispersion, test set", *(f"seed {seed}" for seed in seeds), "mean ± std"]
    return [*_table(header, rows), *(f"  {label}" for label in labels.values())]
