"""What a ``dapt`` run shows: no warnings nobody can act on, no product tips or W&B banners."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_WARNINGS = (
    # Raised inside Lightning by this torch version; nothing a user can act on.
    r".*isinstance\(treespec, LeafSpec\).*",
    # The frozen CLIP is in eval mode on purpose (no dropout, fixed statistics) while the prompts train.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # `dapt` hands LightningCLI the arguments it was given, which are also sys.argv: no mistake to warn about.
    r"LightningCLI's args parameter is intended to run from within Python",
    # Under DDP: the learning rate and the dispersion measures (computed from all-reduced sums) are the same on every
    # process, so there is nothing to accumulate across devices.
    r"It is recommended to use `self\.log\('(train/lr|(val|test)/dispersion/\w+)', \.\.\., sync_dist=True\)`",
)
"""The warnings every ``dapt`` run keeps off the console."""


@contextmanager
def quiet_console() -> Iterator[None]:
    """The console of a ``dapt`` run: no warnings a user cannot act on, no product tips, no W&B banner (the
    closing summary says where the W&B run went and how to upload it)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info logs from
    raise_exceptions = logging.raiseExceptions
    # A log handler that cannot write (W&B's debug log, the run's log, on a full disk) would print a traceback for
    # every log line, thousands of them, before the run's one error line.
    logging.raiseExceptions = False
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        tips.addFilter(skip_advertisements)
        try:
            yield
        finally:
            tips.removeFilter(skip_advertisements)
            logging.raiseExceptions = raise_exceptions


def skip_advertisements(record: logging.LogRecord) -> bool:
    """Drop Lightning's product tips from the console: lines nobody needs to act on."""
    return not str(record.msg).startswith("💡 Tip")
