"""``dapt sweep summarize``: every table (``tables.py``) as ``.md``, ``.csv`` and ``.tex`` files, the few-shot figure
(``figures.py``), and optionally a W&B run holding them."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from dapt_lightning.arguments import command_parser, parse
from dapt_lightning.experiments.sweep.figures import fewshot_figure
from dapt_lightning.experiments.sweep.results import collect
from dapt_lightning.experiments.sweep.tables import CSV_FIELDS, Table, build_tables


def log_to_wandb(tables: list[Table], figure: Path | None, save_dir: Path, project: str) -> None:
    """Log the figure and every table (as a W&B table of its CSV rows) to a new W&B run named ``summary``.

    Offline without W&B credentials (``DAPTWandbLogger``); the run's files go under ``save_dir/wandb``.
    """
    from dapt_lightning.loggers import DAPTWandbLogger

    logger = DAPTWandbLogger(save_dir=str(save_dir), project=project, name="summary", group="summary")
    try:
        if figure is not None:
            logger.log_image("summary/fewshot", [str(figure)])
        for table in tables:
            rows = table.csv_rows()
            if rows:
                columns = list(rows[0])
                data = [[None if value == "" else value for value in r.values()] for r in rows]  # "" is a missing std
                logger.log_table(f"summary/{table.name}", columns=columns, data=data)
        logger.finalize("success")
    finally:
        logger.experiment.finish()


def summarize(runs_dir: str | Path, out_dir: str | Path, wandb_project: str | None = None) -> dict[str, Path]:
    """Write every table as ``.md``, ``.csv`` and ``.tex``, and the few-shot figure ``fewshot.png``, to ``out_dir``.

    Returns:
        The written files: ``NAME`` (Markdown), ``NAME_csv``, ``NAME_tex`` for each table, and ``fewshot_png``.
    """
    tables, fewshot = build_tables(collect(runs_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for table in tables:
        written[table.name] = out / f"{table.name}.md"
        written[table.name].write_text(table.markdown())
        written[f"{table.name}_tex"] = out / f"{table.name}.tex"
        written[f"{table.name}_tex"].write_text(table.latex())
        written[f"{table.name}_csv"] = out / f"{table.name}.csv"
        with open(written[f"{table.name}_csv"], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(table.csv_rows())
    figure = fewshot_figure(fewshot, out / "fewshot.png")
    if figure is not None:
        written["fewshot_png"] = figure
    if wandb_project:
        log_to_wandb(tables, figure, out, wandb_project)
    return written


def summarize_main(argv: list[str]) -> int:
    """``dapt sweep summarize --runs runs --out results [--wandb PROJECT]``."""
    parser = command_parser(
        "dapt sweep summarize", "The papers' tables and the few-shot figure from metrics.json files"
    )
    parser.add_argument("--runs", default="runs", help="folder searched for metrics.json files")
    parser.add_argument("--out", default="results", help="where the tables and the figure go")
    parser.add_argument(
        "--wandb", type=str | None, metavar="PROJECT", default=None, help="also log the tables and figure to W&B"
    )
    args = parse(parser, argv)
    results = collect(args.runs)
    if not results:
        print(f"dapt sweep summarize: no metrics.json with a test accuracy under {args.runs}", file=sys.stderr)
        return 1
    written = summarize(args.runs, args.out, wandb_project=args.wandb)
    print(f"{len(results)} runs -> {args.out}: " + ", ".join(sorted(p.name for p in written.values())))
    return 0
