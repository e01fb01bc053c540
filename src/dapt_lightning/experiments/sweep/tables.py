"""The papers' tables from a sweep's results, as Markdown, CSV and LaTeX (``summary.py`` writes them).

Tables, each written as ``NAME.md``, ``NAME.csv`` (full precision, one row per cell) and ``NAME.tex`` (booktabs):

* ``fewshot``: per shot count, methods x datasets and their average (CoOp's few-shot benchmark);
* ``base2new``: base / new / harmonic mean, averaged over the datasets, then per dataset (CoCoOp's Table 1);
* ``cross_dataset``: a source dataset's prompts tested on each target and the target average (CoCoOp's Table 2);
* ``domain_generalisation``: ImageNet -> ImageNetV2, -Sketch, -A, -R (CoCoOp's Table 3);
* ``ablation``: which prompts and losses each method or variant uses, and its averages in every protocol.

A cell is the mean over seeds, ``± std`` (sample) only with two or more seeds, and ``(n=K)`` its number of seeds;
"—" means no run. An average needs every dataset of its table, with the same seeds: otherwise it is left out and a
note under the table says what is missing. The results come from ``results.py``; the figure from ``figures.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dapt_lightning.experiments.sweep.results import (
    COMPONENTS,
    DG_TARGETS,
    METHOD_ORDER,
    PAPER_DATASETS,
    BaseToNew,
    Cell,
    FewShot,
    Result,
    average,
    group_cells,
    harmonic,
    order,
    seeds_text,
    shot_counts,
)

MISSING = "—"
LEGEND = (
    "Accuracy (%): mean ± sample std over seeds (std only with 2 or more seeds), (n=K) seeds per cell, "
    f"{MISSING} no run. An average covers every dataset of its table with the same seeds, or is left out."
)
CSV_FIELDS = ["table", "section", "method", "column", "mean", "std", "n", "seeds"]
Value = Cell | str | None


@dataclass
class Section:
    """One table as a paper prints it: a header, rows of (method, values), and notes on what is left out."""

    title: str
    header: list[str]
    rows: list[tuple[str, list[Value]]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A named table (the file stem) with a title and its sections."""

    name: str
    title: str
    sections: list[Section]

    def markdown(self) -> str:
        """The table as Markdown: a heading, the legend, one pipe table per section, notes under each."""
        parts = [f"## {self.title}\n\n{LEGEND}\n"]
        for section in self.sections:
            lines = [f"### {section.title}\n"] if section.title else []
            lines.append("| " + " | ".join(section.header) + " |")
            lines.append("|---|" + "|".join(["---:"] * (len(section.header) - 1)) + "|")
            for label, values in section.rows:
                lines.append("| " + " | ".join([label, *(_text(v) for v in values)]) + " |")
            lines += [f"\n{note}" for note in section.notes]
            parts.append("\n".join(lines) + "\n")
        if not self.sections:
            parts.append("No runs for this table.\n")
        return "\n".join(parts)

    def latex(self) -> str:
        """The table as LaTeX (booktabs, amssymb): one ``table`` environment per section."""
        parts = [f"% {self.title}. {LEGEND}\n% Needs \\usepackage{{booktabs,amssymb}}.\n"]
        for section in self.sections:
            caption = _tex(self.title + (f", {section.title}" if section.title else ""))
            lines = [
                "\\begin{table}[t]",
                "\\centering",
                f"\\caption{{{caption}.}}",
                "\\begin{tabular}{l" + "r" * (len(section.header) - 1) + "}",
                "\\toprule",
                " & ".join(_tex(h) for h in section.header) + " \\\\",
                "\\midrule",
            ]
            for label, values in section.rows:
                lines.append(" & ".join([_tex(label), *(_tex_value(v) for v in values)]) + " \\\\")
            lines += ["\\bottomrule", "\\end{tabular}"]
            lines += [f"\\par\\footnotesize {_tex(note)}" for note in section.notes]
            lines.append("\\end{table}")
            parts.append("\n".join(lines) + "\n")
        if not self.sections:
            parts.append("% No runs for this table.\n")
        return "\n".join(parts)

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per number in the table, at full precision (text and missing cells are not rows)."""
        rows = []
        for section in self.sections:
            for label, values in section.rows:
                for column, value in zip(section.header[1:], values, strict=True):
                    if isinstance(value, Cell):
                        rows.append(
                            {
                                "table": self.name,
                                "section": section.title,
                                "method": label,
                                "column": column,
                                "mean": value.mean,
                                "std": "" if value.std is None else value.std,
                                "n": len(value.seeds),
                                "seeds": " ".join(map(str, value.seeds)),
                            }
                        )
        return rows


def _text(value: Value) -> str:
    if value is None:
        return MISSING
    return value if isinstance(value, str) else value.text()


def _tex(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("±", "$\\pm$").replace(MISSING, "--").replace("->", "$\\to$")


def _tex_value(value: Value) -> str:
    if value is None:
        return "--"
    if value == "✓":
        return "$\\checkmark$"
    return _tex(value) if isinstance(value, str) else value.text(pm="$\\pm$")


def _shots_title(shots: int) -> str:
    return "zero-shot" if shots == 0 else f"{shots} shots"


def _left_out(what: str, reasons: list[str]) -> list[str]:
    return [f"{what} left out: " + "; ".join(reasons) + "."] if reasons else []


def fewshot_table(fewshot: FewShot) -> Table:
    """Per shot count: methods x datasets and the average over them."""
    sections = []
    for shots in fewshot.shots:
        rows, reasons = [], []
        for label in fewshot.labels_at(shots):
            mean, why = fewshot.average(label, shots)
            reasons += [f"{label} ({why})"] if why else []
            rows.append((label, [*(fewshot.cell(label, d, shots) for d in fewshot.datasets), mean]))
        header = ["method", *fewshot.datasets, f"Average ({len(fewshot.datasets)})"]
        sections.append(Section(_shots_title(shots), header, rows, _left_out("Average", reasons)))
    return Table("fewshot", "Few-shot accuracy (%)", sections)


def base2new_table(b2n: BaseToNew) -> Table:
    """Base, new and H per method: the average over the datasets first, then each dataset (CoCoOp's layout)."""
    sections = []
    header = ["method", "Base", "New", "H"]
    for shots in b2n.shots:
        rows, reasons = [], []
        for label in b2n.labels:
            base, new, why = b2n.average(label, shots)
            reasons += [f"{label} ({why})"] if why else []
            rows.append((label, [base, new, harmonic(base, new)]))
        title = f"{_shots_title(shots)}, average over {len(b2n.datasets)} datasets"
        sections.append(Section(title, header, rows, _left_out("Average", reasons)))
        for dataset in b2n.datasets:
            rows, reasons = [], []
            for label in b2n.labels:
                base, new = (b2n.cell(label, dataset, shots, part) for part in ("base", "new"))
                h = harmonic(base, new)
                if base is not None and new is not None and h is None:
                    reasons.append(f"{label} (base {seeds_text(base.seeds)}, new {seeds_text(new.seeds)})")
                rows.append((label, [base, new, h]))
            sections.append(Section(f"{_shots_title(shots)}, {dataset}", header, rows, _left_out("H", reasons)))
    return Table("base2new", "Base-to-new generalisation, accuracy (%)", sections)


def transfer_table(results: list[Result], fewshot: FewShot, domain_shift: bool) -> Table:
    """A source's prompts on each target (cross-dataset, or ImageNet's domain shifts), the source's own accuracy
    first and the average over the targets last (CoCoOp's Tables 2 and 3)."""
    transfers = [r for r in results if r.transfer and (r.registered in DG_TARGETS) == domain_shift]
    cells = group_cells(transfers, lambda r: (r.label, r.source, r.dataset, r.shots))
    sections = []
    for source in order({r.source for r in transfers}, PAPER_DATASETS):
        mine = [r for r in transfers if r.source == source]
        targets = order({r.dataset for r in mine}, DG_TARGETS if domain_shift else PAPER_DATASETS)
        for shots in shot_counts(mine):
            rows, reasons = [], []
            for label in order({r.label for r in mine if r.shots in (shots, 0)}, METHOD_ORDER):
                on = {t: cells.get((label, source, t, shots)) or cells.get((label, source, t, 0)) for t in targets}
                mean, why = average(on)
                reasons += [f"{label} ({why})"] if why else []
                rows.append((label, [fewshot.cell(label, source, shots), *on.values(), mean]))
            header = ["method", f"{source} (source)", *targets, f"Average ({len(targets)} targets)"]
            title = f"{source} -> targets, {_shots_title(shots)}"
            sections.append(Section(title, header, rows, _left_out("Average", reasons)))
    if domain_shift:
        return Table("domain_generalisation", "Domain generalisation, accuracy (%)", sections)
    return Table("cross_dataset", "Cross-dataset transfer, accuracy (%)", sections)


def ablation_table(results: list[Result], fewshot: FewShot, b2n: BaseToNew) -> Table:
    """Each method and variant: the prompts and losses its runs used, and its averages in every protocol."""
    used: dict[str, set[tuple[bool, ...]]] = defaultdict(set)
    for result in results:
        used[result.label].add(result.components)
    labels = order({*fewshot.labels, *b2n.labels}, METHOD_ORDER)
    trained = [k for k in fewshot.shots if k]
    header = ["method", *COMPONENTS, *(f"{k} shots" for k in trained)]
    header += [f"{part} ({_shots_title(k)})" for k in b2n.shots for part in ("Base", "New", "H")]
    rows, reasons = [], []
    for label in labels:
        flags = used[label]
        ticks: list[Value] = (
            ["✓" if on else "" for on in next(iter(flags))] if len(flags) == 1 else ["mixed"] * len(COMPONENTS)
        )
        values: list[Value] = []
        for shots in trained:
            mean, why = fewshot.average(label, shots) if label in fewshot.labels else (None, "no few-shot runs")
            reasons += [f"{label} at {shots} shots ({why})"] if why else []
            values.append(mean)
        for shots in b2n.shots:
            base, new, why = b2n.average(label, shots) if label in b2n.labels else (None, None, "no base2new runs")
            reasons += [f"{label} base-to-new ({why})"] if why else []
            values += [base, new, harmonic(base, new)]
        rows.append((label, [*ticks, *values]))
    parts = [f"few-shot over {len(fewshot.datasets)} datasets"] if trained else []
    parts += [f"base-to-new over {len(b2n.datasets)} datasets"] if b2n.shots else []
    sections = [Section("average accuracy: " + ", ".join(parts), header, rows, _left_out("Average", reasons))]
    return Table("ablation", "Ablation: prompts, losses and average accuracy (%)", sections if parts else [])


def build_tables(results: list[Result]) -> tuple[list[Table], FewShot]:
    """Every table of the results, and the few-shot grid the figure is drawn from."""
    fewshot, b2n = FewShot(results), BaseToNew(results)
    tables = [
        fewshot_table(fewshot),
        base2new_table(b2n),
        transfer_table(results, fewshot, domain_shift=False),
        transfer_table(results, fewshot, domain_shift=True),
        ablation_table(results, fewshot, b2n),
    ]
    return tables, fewshot
