"""Progress lines of a training run and of the OOD fit (timestamped, flushed: a job's log
follows them)."""

from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    """Print ``[HH:MM:SS] message`` and flush."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def log_ood(message: str) -> None:
    """Print ``[HH:MM:SS] ood: message`` to stderr (``python -m cxrlake.training.ood`` answers
    with JSON on stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] ood: {message}", file=sys.stderr, flush=True)
