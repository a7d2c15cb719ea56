"""The local inference table: every request `cxrlake serve --lakehouse` answers, in batches.

Request threads hand a row to `InferenceLog.record` (never blocks on disk); a writer thread
appends what has gathered to ``gold.pneumonia_serving_payload`` in one Delta commit every
``flush_rows`` rows or ``flush_seconds`` seconds, whichever comes first, and at shutdown. Rows
are keyed by ``databricks_request_id`` (a fresh uuid per request), so a commit never repeats a
row. If more than ``max_pending`` rows wait (the disk is stuck), the oldest are counted as
dropped rather than held without bound; `InferenceLog.dropped` says how many.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time

import pyarrow as pa

from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import serving as tables


class InferenceLog:
    """Batched writer of ``gold.pneumonia_serving_payload`` in a local lakehouse."""

    def __init__(
        self,
        lakehouse: str | os.PathLike[str],
        env: str = "dev",
        endpoint_name: str = "cxrlake-pneumonia",
        flush_rows: int = 512,
        flush_seconds: float = 2.0,
        max_pending: int = 100_000,
    ) -> None:
        self.lakehouse = Lakehouse(lakehouse, env)
        self.lakehouse.ensure(tables.SERVING_PAYLOAD)
        self.endpoint_name = endpoint_name
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self.commits = 0
        self.written = 0
        self.dropped = 0
        self._pending: list[dict[str, object]] = []
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # one Delta writer (the Lakehouse is not shared)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cxrlake-inference-log", daemon=True)
        self._thread.start()

    def record(
        self,
        request_id: str,
        client_request_id: str | None,
        started: dt.datetime,
        status_code: int,
        duration_ms: int,
        served: dict[str, str] | None,
        request: str | None,
        response: str | None,
    ) -> None:
        """Queue the row of one answered request."""
        served = served or {}
        row: dict[str, object] = {
            "databricks_request_id": request_id,
            "client_request_id": client_request_id,
            "request_date": started.date(),
            "request_time": started,
            "timestamp_ms": int(started.timestamp() * 1000),
            "status_code": status_code,
            "execution_duration_ms": duration_ms,
            "sampling_fraction": 1.0,
            "endpoint_name": self.endpoint_name,
            "served_entity_id": served.get("served_entity_name"),
            "served_model_name": served.get("model_name"),
            "served_model_version": served.get("model_version"),
            "request": request,
            "response": response,
        }
        with self._cond:
            self._pending.append(row)
            if len(self._pending) > self.max_pending:
                del self._pending[0]
                self.dropped += 1
            if len(self._pending) >= self.flush_rows:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed and len(self._pending) < self.flush_rows:
                    self._cond.wait(self.flush_seconds)
                rows, self._pending = self._pending, []
                closed = self._closed
            if rows:
                self._write(rows)
            if closed:
                with self._cond:
                    rows, self._pending = self._pending, []
                if rows:
                    self._write(rows)
                return

    def _write(self, rows: list[dict[str, object]]) -> None:
        try:
            batch = pa.Table.from_pylist(rows, schema=tables.GOLD_SERVING_PAYLOAD)
            with self._write_lock:
                self._append(batch)
        except Exception as e:  # the server keeps answering; the loss is reported
            self.dropped += len(rows)
            print(
                f"cxrlake serve: inference log: {len(rows)} rows not written: {e}", file=sys.stderr
            )
            return
        self.commits += 1
        self.written += len(rows)

    def _append(self, batch: pa.Table, attempts: int = 3) -> None:
        """Append in one commit; a commit that lost a race with another writer (`cxrlake
        maintain` compacting the table) is tried again."""
        for attempt in range(attempts):
            try:
                self.lakehouse.append(tables.SERVING_PAYLOAD, batch, operation="serve")
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def flush(self) -> None:
        """Write what is pending now (used by tests and at shutdown)."""
        with self._cond:
            rows, self._pending = self._pending, []
        if rows:
            self._write(rows)

    def close(self) -> None:
        """Write the pending rows and stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
