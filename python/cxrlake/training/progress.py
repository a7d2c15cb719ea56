"""Progress lines of a training run (stdout, timestamped, flushed: a job's log follows them)."""

from __future__ import annotations

import time


def log(message: str) -> None:
    """Print ``[HH:MM:SS] message`` and flush."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
