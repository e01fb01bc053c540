"""``dapt data check`` and ``dapt data download``: the data commands of the ``dapt`` entry point."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT_ENV = "DAPT_DATA_ROOT"


def _root(value: str | None, parser: argparse.ArgumentParser) -> Path:
    root = value or os.environ.get(ROOT_ENV)
    if not root:
        parser.error(f"--root is required (or set ${ROOT_ENV}): the folder that holds oxford_pets/, caltech-101/, ...")
    return Path(root).expanduser()


def build_parser() -> argparse.ArgumentParser:
    """The ``dapt data`` argument parser."""
    from dapt_lightning.data.download import MIRROR_ENV
    from dapt_lightning.data.registry import download_plans

    plans = sorted(download_plans())

    parser = argparse.ArgumentParser(prog="dapt data", description="Check or download the benchmark datasets.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="report which datasets are ready and exactly what the others miss")
    check.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    check.add_argument("--root", help=f"data root (default: ${ROOT_ENV})")
    check.add_argument(
        "--full", action="store_true", help="check that every listed image exists and decodes (slow: reads every image)"
    )

    download = sub.add_parser("download", help="download datasets with public URLs into the CoOp layout")
    download.add_argument("names", nargs="+", metavar="NAME", choices=plans, help=", ".join(plans))
    download.add_argument("--root", help=f"data root (default: ${ROOT_ENV})")
    download.add_argument("--mirror", help=f"base URL serving <mirror>/<name>/<file> (default: ${MIRROR_ENV})")
    download.add_argument("--no-verify", action="store_true", help="skip the checksum check")
    download.add_argument("--keep-archives", action="store_true", help="keep archives after extracting them")
    download.add_argument("--retries", type=int, default=3, help="retries per file after a dropped connection")
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def data_main(argv: list[str]) -> int:
    """Run ``dapt data ARGV``; return the exit status.

    ``check`` returns 1 when a dataset named on the command line is not ``found`` (with no names it only
    reports); ``download`` returns 1 when a download fails and 0 otherwise, printing the steps left to do by hand.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    root = _root(args.root, parser)
    if args.command == "check":
        from dapt_lightning.data.check import check_datasets, print_table

        if not root.is_dir():
            print(f"dapt data check: the data root {root} does not exist", file=sys.stderr)
            return 1
        try:
            statuses = check_datasets(root, names=args.names or None, full=args.full)
        except ValueError as err:
            parser.error(str(err))
        print_table(statuses)
        return 1 if args.names and any(s.status != "found" for s in statuses) else 0

    from dapt_lightning.data.download import DownloadError, download_dataset

    status = 0
    for name in args.names:
        try:
            report = download_dataset(
                name,
                root,
                mirror=args.mirror,
                verify=not args.no_verify,
                keep_archives=args.keep_archives,
                retries=args.retries,
                progress=not args.quiet,
            )
        except DownloadError as err:
            print(f"dapt data download {name}: {err}", file=sys.stderr)
            status = 1
            continue
        done = ", ".join(report.fetched) or "nothing new"
        print(f"{name}: fetched {done}" + (f"; already there: {', '.join(report.skipped)}" if report.skipped else ""))
        if report.manual:
            print(f"{name}: still to do by hand: {report.manual.replace('ROOT', str(root))}")
    return status


if __name__ == "__main__":
    raise SystemExit(data_main(sys.argv[1:]))
