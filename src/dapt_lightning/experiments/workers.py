"""Worker processes that never outlive the process that started them (``dapt sweep --workers N``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1
"""Linux's ``prctl`` option: the signal this process gets when its parent dies."""


def die_with_parent(parent: int, grace: float = 10.0) -> None:
    """End this worker when ``parent`` (the pid that started it) ends, even by SIGKILL.

    On Linux the kernel sends SIGTERM at the parent's death (``prctl(PR_SET_PDEATHSIG)``), which a running run turns
    into a recorded interruption and a released claim (``run.interruptible``). A watchdog thread ends the process
    ``grace`` seconds after it finds the parent gone, wherever that signal does not arrive or does not end it (an
    idle worker waiting on its dead parent's queue).
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: the watchdog alone
            ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, grace), name="die-with-parent", daemon=True).start()


def _watch(parent: int, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    time.sleep(grace)
    os._exit(1)
