"""Ctrl-C during a save: the save finishes first, then `KeyboardInterrupt`.

Imports: nothing of jscope.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any


@contextlib.contextmanager
def deferred(save_path: Any):
    """Lets a save started in the main thread finish before Ctrl-C stops it.

    The first SIGINT prints one line and makes the list this yields non-empty
    (the caller raises `KeyboardInterrupt` once the save is done); a second one
    aborts at once. Custom SIGINT handlers, and
    saves in other threads, are left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield []
        return
    interrupted: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        interrupted.append(signum)
        print(
            f"jscope: interrupted; finishing the checkpoint save to {save_path} "
            "first (Ctrl-C again to abort it)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        if signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)
