"""The bronze rows silver+gold analyses, each decoded once: analysed ahead while bronze ran, or
read back from the bronze table (`cxrlake.lakehouse.pipeline`, "silver+gold").

Each batch of new bronze rows is analysed on a worker thread as soon as bronze has read it (the
core releases the GIL), so decoding and inference overlap bronze's reading, hashing and writing,
and silver+gold need not read those bytes back (`Lookahead`). Silver+gold takes from these
results the rows the rule's to-do set (`rules.ANALYZE_TODO`) selects, each once (`only_keys`),
and drops the others (e.g. images held at listing); rows of the to-do set no result covers
(beyond the look-ahead's bounds, or left by an earlier run) are streamed from bronze
(`bronze_contents`). The rules decide which rows exist; this only changes when the work is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import transforms
from cxrlake.medallion.schemas import BRONZE
from cxrlake.model import Model
from cxrlake.threshold import SiteThreshold

Analysis = Future[transforms.AnalyzedBatches]
"""An `transforms.analyze_batch` running on the look-ahead's worker."""


def row_keys(table: pa.Table | pa.RecordBatch, first: str = "image_id") -> pa.Array:
    """``<image_id>/<content_sha256>`` per row: one column to match (image, bytes) pairs."""
    return pc.binary_join_element_wise(
        table.column(first).cast(pa.string()), table.column("content_sha256"), "/"
    )


def only_keys(out: transforms.AnalyzedBatches, keys: pa.Array) -> transforms.AnalyzedBatches:
    """``out`` restricted to the rows of the (image_id, content_sha256) ``keys``, each once."""
    parts = []
    for part in out:
        found = row_keys(part)
        if len(found) != len(keys) or not pc.all(pc.is_in(found, value_set=keys)).as_py():
            part = part.filter(pc.is_in(found, value_set=keys))
            found = row_keys(part)
        first = pc.unique(found)
        if len(first) < part.num_rows:
            part = part.take(pc.index_in(first, found))
        parts.append(part)
    return transforms.AnalyzedBatches(*parts)


class Lookahead:
    """Analyses of new bronze rows started while bronze runs, within ``max_bytes`` image bytes
    and ``max_rows`` rows (both bound the memory whatever the size of the run)."""

    def __init__(
        self,
        model: Model,
        threads: int | None,
        threshold: SiteThreshold | None,
        max_bytes: int,
        max_rows: int,
    ) -> None:
        self.model = model
        self.threads = threads
        self.threshold = threshold
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._started: list[tuple[pa.Array, Analysis]] = []  # (keys, analysis)
        self._bytes = 0
        self._worker: ThreadPoolExecutor | None = None

    def start(self, rows: pa.Table) -> None:
        """Start analysing ``rows`` (new bronze rows) on the worker thread, unless that would
        pass the bounds."""
        if not rows.num_rows:
            return
        fresh = rows.select(list(transforms.BRONZE_ANALYZE_COLUMNS))
        size = fresh.column("content").nbytes
        rows_ahead = sum(len(keys) for keys, _ in self._started) + fresh.num_rows
        if self._bytes + size > self.max_bytes or rows_ahead > self.max_rows:
            return
        self._bytes += size
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="cxrlake-analyze")
        analysis = self._worker.submit(
            transforms.analyze_batch,
            fresh,
            model=self.model,
            threads=self.threads,
            threshold=self.threshold,
        )
        self._started.append((row_keys(fresh).combine_chunks(), analysis))

    def stop(self) -> None:
        """Stop analysing ahead and forget the results (end of silver+gold, or a failure)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        self._started, self._bytes = [], 0

    def take(self, todo: pa.Table) -> tuple[list[tuple[Analysis, pa.Array]], pa.Table]:
        """The analyses done ahead with the keys of ``todo`` each should give (every key once),
        and the rows of ``todo`` none of them covers."""
        wanted = row_keys(todo)
        plans: list[tuple[Analysis, pa.Array]] = []
        covered = pa.array([], pa.string())
        for keys, analysis in self._started:
            mine = pc.unique(keys.filter(pc.is_in(keys, value_set=wanted)))
            mine = mine.filter(pc.invert(pc.is_in(mine, value_set=covered)))
            if not len(mine):
                analysis.cancel()  # nothing of it is to do (e.g. images held at listing)
                continue
            plans.append((analysis, mine))
            covered = pa.concat_arrays([covered, mine])
        self._started = []  # the plans hold what is used; results are released as applied
        return plans, todo.filter(pc.invert(pc.is_in(wanted, value_set=covered)))


def bronze_contents(lh: Lakehouse, todo: pa.Table, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Stream the bronze rows (with content) of ``todo``'s (image_id, content_sha256) pairs,
    read from the table, one row per pair, in batches of at most ``batch_size`` rows."""
    if not todo.num_rows:
        return
    wanted = row_keys(todo)
    shas = pc.unique(todo.column("content_sha256"))
    emitted: set[str] = set()
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    columns = list(transforms.BRONZE_ANALYZE_COLUMNS)
    for batch in lh.scan_batches(BRONZE, columns, {"content_sha256": shas}, batch_size):
        keys = row_keys(batch)
        mask = pc.is_in(keys, value_set=wanted)
        if emitted:
            mask = pc.and_(mask, pc.invert(pc.is_in(keys, value_set=pa.array(list(emitted)))))
        batch = batch.filter(mask)
        if not batch.num_rows:
            continue
        keys = row_keys(batch)
        first = pc.unique(keys)
        if len(first) < batch.num_rows:  # one row per pair even if bronze holds a duplicate
            batch = batch.take(pc.index_in(first, keys))
        emitted.update(first.to_pylist())
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= batch_size:
            yield from pa.Table.from_batches(pending).to_batches(max_chunksize=batch_size)
            pending, pending_rows = [], 0
    if pending:
        yield from pa.Table.from_batches(pending).to_batches(max_chunksize=batch_size)
