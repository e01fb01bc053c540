"""Telling a full disk from other errors, through the chains of causes errors carry."""

from __future__ import annotations

import errno

from dapt_lightning.storage import is_disk_full


def test_a_full_disk_is_found_behind_wrapping_errors_and_cycles() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = ValueError("could not log")
    wrapped.__cause__ = full
    assert is_disk_full(full) and is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(ValueError("x"))
    # A cause re-raised while its effect is handled points back at it: the search still ends.
    effect, cause = ValueError("wrapped"), ValueError("root")
    effect.__cause__, cause.__context__ = cause, effect
    assert not is_disk_full(effect)
