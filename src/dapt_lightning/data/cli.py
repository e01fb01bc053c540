"""``dapt data check`` and ``dapt data download``: the data commands of the ``dapt`` entry point."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dapt_lightning.arguments import ActionYesNo, ArgumentParser, UsageError, command_parser, parse

ROOT_ENV = "DAPT_DATA_ROOT"


def _root(value: str | None) -> Path:
    root = value or os.environ.get(ROOT_ENV)
    if not root:
        raise UsageError(
            f"--root is required (or set ${ROOT_ENV}): the folder that holds oxford_pets/, caltech-101/, ..."
        )
    return Path(root).expanduser()


def build_parser() -> ArgumentParser:
    """The ``dapt data`` parser: ``check`` and ``download``."""
    from dapt_lightning.data.download import MIRROR_ENV
    from dapt_lightning.data.registry import download_plans

    plans = sorted(download_plans())
    parser = command_parser("dapt data", "Check or download the benchmark datasets.")
    subcommands = parser.add_subcommands(dest="command")

    check = command_parser("dapt data check", "Report which datasets are ready and exactly what the others miss.")
    check.add_argument("names", nargs="*", help="datasets to check (default: all)")
    check.add_argument("--root", type=str | None, default=None, help=f"data root (default: ${ROOT_ENV})")
    check.add_argument(
        "--full", action=ActionYesNo, default=False, help="check that every listed image exists and decodes (slow)"
    )
    subcommands.add_subcommand("check", check, help="report which datasets are ready and what the others miss")

    download = command_parser("dapt data download", "Download datasets with public URLs into the CoOp layout.")
    download.add_argument("names", nargs="+", help=f"datasets to download: {', '.join(plans)}")
    download.add_argument("--root", type=str | None, default=None, help=f"data root (default: ${ROOT_ENV})")
    download.add_argument(
        "--mirror",
        type=str | None,
        default=None,
        help=f"base URL serving <mirror>/<name>/<file> (default: ${MIRROR_ENV})",
    )
    download.add_argument("--verify", action=ActionYesNo, default=True, help="check published checksums")
    download.add_argument("--keep_archives", action=ActionYesNo, default=False, help="keep archives after extracting")
    download.add_argument("--retries", type=int, default=3, help="retries per file after a dropped connection")
    download.add_argument("--progress", action=ActionYesNo, default=True, help="progress bars")
    subcommands.add_subcommand("download", download, help="download datasets with public URLs into the CoOp layout")
    return parser


def data_main(argv: list[str]) -> int:
    """Run ``dapt data ARGV``; return the exit status.

    ``check`` returns 1 when a dataset named on the command line is not ``found`` (with no names it only
    reports); ``download`` returns 1 when a download fails and 0 otherwise, printing the steps left to do by hand.
    """
    args = parse(build_parser(), argv)
    command = args.command
    options = args[command]
    root = _root(options.root)
    if command == "check":
        from dapt_lightning.data.check import check_datasets, print_table

        if not root.is_dir():
            print(f"dapt data check: the data root {root} does not exist", file=sys.stderr)
            return 1
        try:
            statuses = check_datasets(root, names=options.names or None, full=options.full)
        except ValueError as error:
            raise UsageError(str(error)) from None
        print_table(statuses)
        return 1 if options.names and any(s.status != "found" for s in statuses) else 0

    from dapt_lightning.data.download import DownloadError, download_dataset
    from dapt_lightning.data.registry import download_plans

    unknown = [name for name in options.names if name not in download_plans()]
    if unknown:
        raise UsageError(
            f"dapt data download: no download plan for {', '.join(unknown)}; choose from "
            f"{', '.join(sorted(download_plans()))}"
        )
    status = 0
    for name in options.names:
        try:
            report = download_dataset(
                name,
                root,
                mirror=options.mirror,
                verify=options.verify,
                keep_archives=options.keep_archives,
                retries=options.retries,
                progress=options.progress,
            )
        except DownloadError as error:
            print(f"dapt data download {name}: {error}", file=sys.stderr)
            status = 1
            continue
        done = ", ".join(report.fetched) or "nothing new"
        print(f"{name}: fetched {done}" + (f"; already there: {', '.join(report.skipped)}" if report.skipped else ""))
        if report.manual:
            print(f"{name}: still to do by hand: {report.manual.replace('ROOT', str(root))}")
    return status
