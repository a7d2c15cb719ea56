"""The local engine's bronze -> silver -> gold run (``cxrlake pipeline run``).

This module adapts the engine-neutral medallion (`cxrlake.medallion`) to local files: it lists the
sources, runs the rules of `cxrlake.medallion.rules` in DuckDB over Arrow snapshots of the tables'
key columns, and applies the rows they return with delta-rs (`storage.Lakehouse`): one atomic
Delta commit per table per stage, or per `COMMIT_ROWS` rows (`COMMIT_BYTES` of image bytes in
bronze) when a stage holds more. The Spark engine (`cxrlake.spark.jobs`) runs the same rules.

Stages:

1. listing: walk the sources (regular files only; names that are not UTF-8 and other entries are
   held with a reason).
2. bronze: hold collisions and rejected entries in quarantine (evicting those images from silver
   and gold), read files bronze has not seen with this (path, size, mtime), append new
   (image_id, content_sha256) versions, record new stats of known bytes.
3. silver+gold: for every image not in its end state, decode once and score once with the model
   (`medallion.transforms.analyze_batch`); MERGE silver, features and predictions, or quarantine,
   and delete what the outcome excludes. New bronze rows are analysed ahead, while bronze runs
   (see `AHEAD_BYTES`); silver+gold applies the rows of those results the rule selects.
4. performance: metrics of the current model over the predictions of the current bytes of images
   in silver, appended when that prediction set has not been evaluated yet.

A run killed at any point leaves images outside their end state; the next run selects and
finishes them (see `cxrlake.medallion.rules`). A run holding the lakehouse lock excludes any other
run on the same catalog.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from cxrlake.files import skip_summary
from cxrlake.lakehouse import listing
from cxrlake.lakehouse.storage import Lakehouse, LakehouseLock
from cxrlake.medallion import identity, metrics, rules, schemas, transforms
from cxrlake.medallion.schemas import BRONZE, PERFORMANCE, PREDICTIONS, QUARANTINE, SILVER

DEFAULT_BATCH_SIZE = 64
"""Images per Arrow batch handed to the Rust core."""

COMMIT_ROWS = 1024
"""Rows a stage holds for one table before it commits them (it commits the rest when it ends):
a Delta commit costs a fixed few milliseconds plus a log entry, whatever its size."""

COMMIT_BYTES = 32 << 20
"""Image bytes bronze holds before it commits them (bounds the memory of a large run)."""

AHEAD_BYTES = 96 << 20
AHEAD_ROWS = 512
"""At most this many image bytes (`AHEAD_BYTES`) and rows of this run's new bronze rows are
analysed ahead, while bronze goes on (the bytes wait in memory for the worker, the results for
silver+gold: both bounded whatever the size of the run).

Each batch of new bronze rows is analysed on a worker thread as soon as it is read (the core
releases the GIL), so decoding and inference overlap bronze's reading, hashing and writing, and
silver+gold need not read those bytes back from the bronze table. Silver+gold takes from these
results the rows the rule's to-do set (`rules.ANALYZE_TODO`) selects, each once, and drops the
others (e.g. images held at listing); rows of the to-do set no result covers (beyond this bound,
or left by an earlier run) are read back from bronze and analysed there. The rules decide which
rows exist; this only changes when the work is done, and each image is still decoded once."""

STAGES = ("listing", "bronze", "silver+gold", "performance")
_STAGE_OF = {
    "features": "silver",
    "silver": "silver",
    "predictions": "gold",
    "quarantine": "silver",
}


@dataclass
class RunSummary:
    """What one pipeline run did and what the lakehouse holds afterwards."""

    run_id: str
    lakehouse: str
    env: str
    model_name: str = ""
    model_version: str = ""
    files_found: int = 0
    """Image files (and entries held at listing) found under the sources."""
    files_listed: int = 0
    """Of those, the ones this run considered (all of them unless sampled)."""
    sample_per_label: int | None = None
    files_skipped_unchanged: int = 0
    files_not_images: int = 0
    """Files skipped because their names are not image names (`cxrlake.files.is_image_name`)."""
    not_images_note: str = ""
    """`cxrlake.files.skip_summary` of those files ('' when none)."""
    new_rows: dict[str, int] = field(default_factory=dict)
    """Rows inserted per table by this run."""
    updated_rows: dict[str, int] = field(default_factory=dict)
    """Rows updated per table by this run."""
    deleted_rows: dict[str, int] = field(default_factory=dict)
    """Rows deleted per table by this run."""
    total_rows: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage."""
    quarantined: list[dict[str, str]] = field(default_factory=list)
    """Rows quarantined by this run: file_path, stage, reason."""
    collisions: int = 0
    """Image ids held this run because two files claim them."""
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    """Whole quarantine table: count per reason."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Latest gold.model_performance row per split for the run's model."""
    threshold: float | None = None
    threshold_source: str = "model"
    """The threshold that decided this run's labels: ``model`` or ``site:<id>:v<n>``."""
    redecided: int = 0
    """Earlier predictions of the run's model re-decided at the run's threshold."""
    label_changes: list[dict[str, Any]] = field(default_factory=list)
    """Of those, the films whose label changed: filename, image_id, from, to."""
    threshold_note: str = ""
    """Why the run's threshold is what it is, when ``--site`` named a site (e.g. none stored)."""
    development_films: dict[str, list[int]] = field(default_factory=dict)
    """Per labelled split: [films from the model's development set, films] (see
    `cxrlake.training.provenance`); figures on such films are no evaluation."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``cxrlake pipeline run --json``)."""
        return {
            k: getattr(self, k)
            for k in self.__dataclass_fields__  # noqa: SIM118 - dataclass field order
        }

    def format(self) -> str:
        """Human-readable multi-line summary; file names and reasons have control characters
        escaped, so no input can forge a line."""
        p = identity.printable
        lines = [
            f"cxrlake pipeline run {self.run_id}",
            f"  lakehouse: {p(schemas.catalog_path(self.lakehouse, self.env))}",
            f"  model:     {p(self.model_name)} {p(self.model_version)}, threshold "
            f"{self.threshold if self.threshold is not None else float('nan'):.4f} "
            f"({p(self.threshold_source)})",
            *self._threshold_lines(),
            f"  files:     {self._files_line()}",
            "  stages:    "
            + ", ".join(f"{s} {self.stage_seconds[s]:.2f} s" for s in self.stage_seconds),
            "  tables (rows inserted / updated / deleted this run, total rows):",
        ]
        if self.not_images_note:
            lines.insert(4, f"             {p(self.not_images_note)}")
        for spec in schemas.TABLES:
            name = spec.qualified_name
            lines.append(
                f"    {name:<28} {self.new_rows.get(name, 0):>7} / "
                f"{self.updated_rows.get(name, 0):>5} / {self.deleted_rows.get(name, 0):>5}"
                f"   {self.total_rows.get(name, 0):>7}"
            )
        lines.append(f"  quarantined this run: {len(self.quarantined)}")
        if self.collisions:
            lines.append(
                f"  identity collisions: {self.collisions} image ids claimed by several files "
                "(quarantined, reason names the files)"
            )
        for q in self.quarantined[:20]:
            lines.append(f"    [{q['stage']}] {p(q['file_path'])}: {p(q['reason'])}")
        if len(self.quarantined) > 20:
            lines.append(f"    ... and {len(self.quarantined) - 20} more")
        if self.quarantine_reasons:
            lines.append("  quarantine table by reason:")
            for reason, n in sorted(self.quarantine_reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {n:>5}  {p(reason)}")
        if self.metrics:
            lines.append("  model performance (latest evaluation per labelled split):")
            lines.append(
                f"    {'split':<22} {'n':>6} {'acc':>6} {'prec':>6} {'recall':>6} "
                f"{'f1':>6} {'auc':>6}"
            )
            from cxrlake.training.provenance import evaluation_caveat

            share = {k: tuple(v) for k, v in self.development_films.items()}
            for m in self.metrics:
                auc = "-" if m["auc_roc"] is None else f"{m['auc_roc']:.3f}"
                lines.append(
                    f"    {p(m['dataset_split']):<22} {m['total_samples']:>6} "
                    f"{m['accuracy']:>6.3f} {m['precision']:>6.3f} {m['recall']:>6.3f} "
                    f"{m['f1_score']:>6.3f} {auc:>6}"
                )
                caveat = evaluation_caveat(share, m["dataset_split"])
                if caveat:
                    lines.append(f"      ^ {caveat}")
            if any(n_dev for n_dev, _ in share.values()):
                lines.append(
                    "    (figures on the model's own development films measure fit, not accuracy "
                    "on new films: the model card holds the validation and shift analysis)"
                )
        return "\n".join(lines)

    def _threshold_lines(self) -> list[str]:
        """What the run's threshold did to earlier predictions (and why, for ``--site``)."""
        p = identity.printable
        lines = [f"             {p(self.threshold_note)}"] if self.threshold_note else []
        if self.redecided:
            changes = ", ".join(
                f"{p(c['filename'] or c['image_id'])} {c['from']} -> {c['to']}"
                for c in self.label_changes[:10]
            )
            more = (
                f" and {len(self.label_changes) - 10} more" if len(self.label_changes) > 10 else ""
            )
            lines.append(
                f"             re-decided {self.redecided} earlier prediction(s) of this model at "
                f"this threshold: {len(self.label_changes)} label(s) changed"
                + (f": {changes}{more}" if changes else "")
            )
        return lines

    def _files_line(self) -> str:
        found = f"{self.files_found} image file{'s' if self.files_found != 1 else ''}"
        if self.sample_per_label is not None:
            found += f", {self.files_listed} sampled ({self.sample_per_label} per label)"
        return f"{found}, {self.files_skipped_unchanged} unchanged since last run"


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: sortable and unique per run."""
    return identity.utc_now().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def _progress(total: int, desc: str, enabled: bool | None) -> tqdm:
    # enabled=None: tqdm decides (shown on a terminal, hidden when stderr is not a TTY)
    return tqdm(
        total=total, desc=desc, unit="img", disable=None if enabled is None else not enabled
    )


def _key(table: pa.Table | pa.RecordBatch, first: str = "image_id") -> pa.Array:
    """``<image_id>/<content_sha256>`` per row: one column to match (image, bytes) pairs."""
    return pc.binary_join_element_wise(
        table.column(first).cast(pa.string()), table.column("content_sha256"), "/"
    )


def _only(out: transforms.AnalyzedBatches, keys: pa.Array) -> transforms.AnalyzedBatches:
    """``out`` restricted to the rows of the (image_id, content_sha256) ``keys``, each once."""
    parts = []
    for part in out:
        found = _key(part)
        if len(found) != len(keys) or not pc.all(pc.is_in(found, value_set=keys)).as_py():
            part = part.filter(pc.is_in(found, value_set=keys))
            found = _key(part)
        first = pc.unique(found)
        if len(first) < part.num_rows:
            part = part.take(pc.index_in(first, found))
        parts.append(part)
    return transforms.AnalyzedBatches(*parts)


def _us_to_ts(values: list[int]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(schemas.TS)


class Pipeline:
    """One run over one lakehouse; use `run_pipeline` unless you need the stages one by one."""

    def __init__(
        self,
        lakehouse: str | os.PathLike,
        env: str = "dev",
        model: Any = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        progress: bool | None = None,
        site: str | None = None,
        commit_rows: int = COMMIT_ROWS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if commit_rows < 1:
            raise ValueError(f"commit_rows must be >= 1, got {commit_rows}")
        self.commit_rows = commit_rows
        self.lh = Lakehouse(lakehouse, env)
        self.model = transforms.load_model(model)
        # The site's calibrated threshold for this model version, if one is stored.
        self.threshold = None
        self.site = site
        if site:
            from cxrlake.lakehouse.site_thresholds import site_threshold

            self.threshold = site_threshold(lakehouse, site, self.model, env)
        self.batch_size = batch_size
        self.threads = threads
        self.progress = progress
        self.run_id = new_run_id()
        self.summary = RunSummary(
            self.run_id,
            self.lh.root,
            self.lh.env,
            model_name=self.model.name,
            model_version=self.model.version,
        )
        self.sources: dict[str, listing.SourceFile] = {}
        self.identity_roots: tuple[str, ...] = ()  # sources of identity rule 2 (identity.py)
        # new bronze rows of this run analysed ahead (see `AHEAD_BYTES`): (keys, analysis)
        self._ahead: list[tuple[pa.Array, Future]] = []
        self._ahead_bytes = 0
        self._worker: ThreadPoolExecutor | None = None
        self.listing = rules.LISTING_SCHEMA.empty_table()
        self._sql = duckdb.connect()
        self._sql.register(
            "model",
            rules.model_row(
                self.model.name, self.model.version, transforms.feature_tag(self.model)
            ),
        )

    # ---------------------------------------------------------------- rules
    def _state(self, *views: str, columns: dict[str, tuple[str, ...]] | None = None) -> None:
        """Register the current key columns of the tables behind ``views`` for the rules."""
        for view in views:
            cols = (columns or {}).get(view, rules.STATE_COLUMNS[view])
            self._sql.register(view, self.lh.read(rules.VIEWS[view], list(cols)))

    def _rule(self, sql: str) -> pa.Table:
        """Run one rule of `cxrlake.medallion.rules` over the registered views."""
        return self._sql.sql(sql).to_arrow_table()

    def _count(self, what: dict[str, int], spec: schemas.TableSpec, n: int) -> None:
        what[spec.qualified_name] = what.get(spec.qualified_name, 0) + int(n)

    def _upsert(
        self,
        spec: schemas.TableSpec,
        rows: pa.RecordBatch | pa.Table,
        stage: str,
        present: pa.Array | pa.ChunkedArray | None = None,
    ) -> None:
        """MERGE ``rows`` on the table's keys; a plain append (same result, a fraction of the
        cost) when ``present`` (image ids that may match a key) shows none of them can match."""
        if present is not None and not pc.any(pc.is_in(rows.column("image_id"), present)).as_py():
            self._insert(spec, rows)
            return
        result = self.lh.merge(spec, rows, run_id=self.run_id, stage=stage)
        self._count(self.summary.new_rows, spec, result.get("num_target_rows_inserted", 0))
        self._count(self.summary.updated_rows, spec, result.get("num_target_rows_updated", 0))

    def _insert(self, spec: schemas.TableSpec, rows: pa.RecordBatch | pa.Table) -> None:
        self._count(self.summary.new_rows, spec, self.lh.append(spec, rows, run_id=self.run_id))

    def _delete(self, spec: schemas.TableSpec, ids: pa.Array | pa.ChunkedArray) -> None:
        values = pc.unique(ids).to_pylist() if len(ids) else []
        if values:
            n = self.lh.delete_keys(spec, "image_id", values, run_id=self.run_id)
            self._count(self.summary.deleted_rows, spec, n)

    # ---------------------------------------------------------------- listing
    def list_sources(self, sources: Sequence[str | os.PathLike], sample: int | None) -> None:
        """Walk ``sources``; keep the regular files (sampled) and the rejected entries."""
        files: dict[str, listing.SourceFile] = {}
        rejected: dict[str, str] = {}
        not_images: list[str] = []
        absolute = [os.path.abspath(os.fspath(s)) for s in sources]
        self.identity_roots = tuple(
            identity.identity_roots(absolute, self.lh.read(BRONZE, ["file_path", "image_id"]))
        )
        for source in absolute:
            for item in listing.walk(source, source in self.identity_roots):
                if isinstance(item, listing.SourceFile):
                    files[item.path] = item
                elif isinstance(item, listing.Skipped):
                    not_images.append(item.path)
                else:
                    rejected[item.path] = item.reason
        chosen = list(files.values())
        if sample is not None:
            chosen = listing.sample_per_label(chosen, sample)
        self.sources = {f.path: f for f in chosen}
        self.summary.files_found = len(files) + len(rejected)
        self.summary.files_listed = len(chosen) + len(rejected)
        self.summary.sample_per_label = sample
        self.summary.files_not_images = len(not_images)
        self.summary.not_images_note = skip_summary(not_images)
        self._set_listing(rejected)

    def _set_listing(self, rejected: dict[str, str]) -> None:
        chosen = list(self.sources.values())
        paths = [f.path for f in chosen] + sorted(rejected)
        ids = identity.identify_paths(pa.array(paths, pa.string()), self.identity_roots)
        ids = ids.column("image_id")
        self.listing = pa.table(
            {
                "file_path": pa.array(paths, pa.string()),
                "image_id": ids,
                "file_size_bytes": pa.array(
                    [f.size for f in chosen] + [None] * len(rejected), pa.int64()
                ),
                "source_modified_at": _us_to_ts(
                    [f.mtime_us for f in chosen] + [None] * len(rejected)
                ),
                "reject_reason": pa.array(
                    [None] * len(chosen) + [rejected[p] for p in sorted(rejected)], pa.string()
                ),
            },
            schema=rules.LISTING_SCHEMA,
        )
        self._sql.register("listing", self.listing)

    # ---------------------------------------------------------------- bronze
    def bronze(self) -> None:
        """Append new file versions to bronze; hold rejected entries and collisions."""
        self._state("bronze")
        to_read = self._rule(rules.BRONZE_TO_READ)
        # files held at listing (identity collisions) are neither read nor unchanged
        self.summary.files_skipped_unchanged = _accepted_files(self.listing) - to_read.num_rows
        unreadable: dict[str, str] = {}
        stat_updates: list[pa.Table] = []
        pending: list[pa.Table] = []
        paths = to_read.column("file_path").to_pylist()
        with _progress(len(paths), "bronze", self.progress) as bar:
            for start in range(0, len(paths), self.batch_size):
                group = [self.sources[p] for p in paths[start : start + self.batch_size]]
                read: dict[str, list[Any]] = {"path": [], "mtime": [], "length": [], "content": []}
                for f in group:
                    try:
                        content = listing.read_source_file(f)
                    except OSError as e:
                        unreadable[f.path] = e.strerror or str(e)
                        continue
                    read["path"].append(f.path)
                    read["mtime"].append(f.mtime_us)
                    read["length"].append(len(content))
                    read["content"].append(content)
                bar.update(len(group))
                if not read["path"]:
                    continue
                binary_files = pa.table(
                    {
                        "path": pa.array(read["path"], pa.string()),
                        "modificationTime": _us_to_ts(read["mtime"]),
                        "length": pa.array(read["length"], pa.int64()),
                        "content": pa.array(read["content"], pa.binary()),
                    }
                )
                incoming = transforms.bronze_batch(
                    binary_files, self.run_id, roots=self.identity_roots
                )
                # the rules see the keys; the bytes stay in Arrow (no copy through DuckDB)
                self._sql.register("incoming", incoming.drop_columns(["content"]))
                new = _key(self._rule(rules.BRONZE_INSERTS))
                pending.append(pa.table(incoming).filter(pc.is_in(_key(incoming), new)))
                self._analyse_ahead(pending[-1])
                if sum(t.num_rows for t in pending) >= self.commit_rows or (
                    sum(t.column("content").nbytes for t in pending) >= COMMIT_BYTES
                ):
                    self._insert_bronze(pending)
                    pending = []
                stat_updates.append(self._rule(rules.BRONZE_STAT_UPDATES))
        self._insert_bronze(pending)
        if stat_updates:
            updates = pa.concat_tables(stat_updates)
            n = updates.num_rows
            updates = updates.append_column(
                "ingested_at", pa.array([identity.utc_now()] * n, schemas.TS)
            ).append_column("ingestion_batch_id", pa.array([self.run_id] * n, pa.string()))
            columns = [c for c in updates.column_names if c not in BRONZE.keys]
            self._count(
                self.summary.updated_rows,
                BRONZE,
                self.lh.update_columns(BRONZE, updates, columns, run_id=self.run_id),
            )
        if unreadable:
            rejected = dict(
                zip(
                    self.listing.filter(pc.is_valid(self.listing.column("reject_reason")))
                    .column("file_path")
                    .to_pylist(),
                    self.listing.filter(pc.is_valid(self.listing.column("reject_reason")))
                    .column("reject_reason")
                    .to_pylist(),
                    strict=True,
                )
            )
            for p in unreadable:
                self.sources.pop(p)
            self._set_listing(rejected | unreadable)
        self._hold_at_listing()

    def _insert_bronze(self, pending: list[pa.Table]) -> None:
        """Append new bronze rows in one commit."""
        if pending:
            self._insert(BRONZE, pa.concat_tables(pending))

    def _analyse_ahead(self, rows: pa.Table) -> None:
        """Start analysing new bronze rows on the worker thread, within `AHEAD_BYTES` and
        `AHEAD_ROWS`."""
        if not rows.num_rows:
            return
        fresh = rows.select(list(transforms.BRONZE_ANALYZE_COLUMNS))
        size = fresh.column("content").nbytes
        rows_ahead = sum(len(keys) for keys, _ in self._ahead) + fresh.num_rows
        if self._ahead_bytes + size > AHEAD_BYTES or rows_ahead > AHEAD_ROWS:
            return
        self._ahead_bytes += size
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="cxrlake-analyze")
        analysis = self._worker.submit(
            transforms.analyze_batch,
            fresh,
            model=self.model,
            threads=self.threads,
            threshold=self.threshold,
        )
        self._ahead.append((_key(fresh).combine_chunks(), analysis))

    def _stop_ahead(self) -> None:
        """Stop analysing ahead and forget the results (end of silver+gold, or a failure)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        self._ahead, self._ahead_bytes = [], 0

    def _analysed_ahead(self, todo: pa.Table) -> tuple[list[tuple[Future, pa.Array]], pa.Table]:
        """The analyses done ahead with the keys of ``todo`` each should give (every key once),
        and the rows of ``todo`` none of them covers."""
        wanted = _key(todo)
        plans: list[tuple[Future, pa.Array]] = []
        covered = pa.array([], pa.string())
        for keys, analysis in self._ahead:
            mine = pc.unique(keys.filter(pc.is_in(keys, value_set=wanted)))
            mine = mine.filter(pc.invert(pc.is_in(mine, value_set=covered)))
            if not len(mine):
                analysis.cancel()  # nothing of it is to do (e.g. images held at listing)
                continue
            plans.append((analysis, mine))
            covered = pa.concat_arrays([covered, mine])
        self._ahead = []  # the plans hold what is used; results are released as applied
        return plans, todo.filter(pc.invert(pc.is_in(wanted, value_set=covered)))

    def _hold_at_listing(self) -> None:
        """Quarantine rejected entries and collisions; release entries that are fine again;
        evict held images from silver and gold."""
        self._state("quarantine", "silver", "features", "predictions")
        held = self._rule(rules.LISTING_HELD)
        collisions = pc.starts_with(held.column("reason"), "identity collision")
        self.summary.collisions = pc.sum(collisions).as_py() or 0
        upserts = self._rule(rules.LISTING_QUARANTINE_UPSERTS)
        if upserts.num_rows:
            rows = transforms.listing_quarantine_batch(
                upserts.column("file_path"),
                upserts.column("reason"),
                self.run_id,
                image_ids=upserts.column("image_id"),
            )
            self._upsert(QUARANTINE, rows, "listing")
            for path, reason in zip(
                upserts.column("file_path").to_pylist(),
                upserts.column("reason").to_pylist(),
                strict=True,
            ):
                self.summary.quarantined.append(
                    {"file_path": path, "stage": "listing", "reason": reason}
                )
        self._delete(QUARANTINE, self._rule(rules.LISTING_QUARANTINE_RELEASES).column(0))
        for view in ("silver", "features", "predictions"):
            self._delete(rules.VIEWS[view], self._rule(rules.listing_evictions(view)).column(0))

    # ---------------------------------------------------------------- silver + gold
    def _bronze_contents(self, todo: pa.Table) -> Iterator[pa.RecordBatch]:
        """Stream the bronze rows (with content) of ``todo``'s (image_id, content_sha256) pairs,
        read from the table, one row per pair, in batches of at most ``batch_size`` rows."""
        if not todo.num_rows:
            return
        wanted = _key(todo)
        shas = pc.unique(todo.column("content_sha256"))
        emitted: set[str] = set()
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        columns = list(transforms.BRONZE_ANALYZE_COLUMNS)
        for batch in self.lh.scan_batches(
            BRONZE, columns, {"content_sha256": shas}, self.batch_size
        ):
            keys = _key(batch)
            mask = pc.is_in(keys, value_set=wanted)
            if emitted:
                mask = pc.and_(mask, pc.invert(pc.is_in(keys, value_set=pa.array(list(emitted)))))
            batch = batch.filter(mask)
            if not batch.num_rows:
                continue
            keys = _key(batch)
            first = pc.unique(keys)
            if len(first) < batch.num_rows:  # one row per pair even if bronze holds a duplicate
                batch = batch.take(pc.index_in(first, keys))
            emitted.update(first.to_pylist())
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= self.batch_size:
                yield from pa.Table.from_batches(pending).to_batches(max_chunksize=self.batch_size)
                pending, pending_rows = [], 0
        if pending:
            yield from pa.Table.from_batches(pending).to_batches(max_chunksize=self.batch_size)

    def silver_gold(self) -> None:
        """Decode and score, once, every image not in its end state (see module docstring)."""
        self._state("bronze", "silver", "features", "quarantine", "predictions")
        todo = self._rule(rules.ANALYZE_TODO)
        present = {
            view: self.lh.read(rules.VIEWS[view], ["image_id"]).column(0)
            for view in ("silver", "features", "quarantine", "predictions")
        }
        # ids a prediction of this model may match (MERGE key: image_id, model, version)
        this_model = {"model_name": self.model.name, "model_version": self.model.version}
        scored = self.lh.read(rules.VIEWS["predictions"], ["image_id"], this_model).column(0)
        may_match = present | {"predictions": scored}
        upserts: dict[str, list[pa.Table]] = {view: [] for view in rules.ANALYZE_UPSERTS}
        deletes: dict[str, list[pa.Table]] = {view: [] for view in rules.ANALYZE_DELETES}

        def commit() -> None:
            # every image of a batch lands in exactly one of silver and quarantine, so the
            # upserts and deletes of several batches commute: one commit per table for all
            for view, tables in upserts.items():
                if tables:
                    rows = pa.concat_tables(tables)
                    self._upsert(rules.VIEWS[view], rows, _STAGE_OF[view], may_match[view])
                    tables.clear()
            for view, arrays in deletes.items():
                if arrays:
                    self._delete(rules.VIEWS[view], pa.concat_tables(arrays).column(0))
                    arrays.clear()

        ahead, todo_here = self._analysed_ahead(todo)

        def analyses() -> Iterator[transforms.AnalyzedBatches]:
            while ahead:
                analysis, keys = ahead.pop(0)
                yield _only(analysis.result(), keys)
            for batch in self._bronze_contents(todo_here):
                yield transforms.analyze_batch(
                    batch, model=self.model, threads=self.threads, threshold=self.threshold
                )

        with _progress(todo.num_rows, "silver+gold", self.progress) as bar:
            for out in analyses():
                parts = out._asdict()
                for view, part in rules.ANALYZE_UPSERTS.items():
                    upserts[view].append(pa.table(parts[part]))
                for q in out.quarantine.select(["file_path", "reason"]).to_pylist():
                    self.summary.quarantined.append({**q, "stage": "silver"})
                for view, part in rules.ANALYZE_DELETES.items():
                    ids = pa.table(parts[part]).select(["image_id"])
                    deletes[view].append(ids.filter(pc.is_in(ids.column(0), present[view])))
                if max(sum(t.num_rows for t in v) for v in upserts.values()) >= self.commit_rows:
                    commit()
                bar.update(sum(len(p) for p in (out.metadata, out.quarantine)))
            commit()
        self._stop_ahead()
        self.redecide()

    # ---------------------------------------------------------------- threshold
    def redecide(self) -> None:
        """Re-decide this model's predictions decided at another threshold than this run's
        (`rules.PREDICTIONS_TO_REDECIDE`), and record which labels changed."""
        if self.site and self.threshold is None:
            self.summary.threshold_note = (
                f"no threshold stored for site {self.site} and model {self.model.name} "
                f"{self.model.version}: labels decided at the model's threshold "
                f"(store one with `cxrlake calibrate --site {self.site}`)"
            )
        elif self.threshold is not None:
            self.summary.threshold_note = (
                f"site {self.site}: threshold {self.threshold.source} (gold.site_thresholds)"
            )
        value = self.threshold.threshold if self.threshold else self.model.threshold
        source = self.threshold.source if self.threshold else "model"
        self._state("predictions", columns={"predictions": rules.REDECIDE_COLUMNS})
        self._sql.register(
            "decision",
            pa.table({"threshold": [float(value)], "threshold_source": [source]}),
        )
        todo = self._rule(rules.PREDICTIONS_TO_REDECIDE)
        if not todo.num_rows:
            return
        probability = todo.column("prediction_probability")
        label = pc.cast(pc.greater_equal(probability, value), pa.int32())
        updates = pa.table(
            {
                "image_id": todo.column("image_id"),
                "model_name": todo.column("model_name"),
                "model_version": todo.column("model_version"),
                "predicted_label": label,
                "is_correct": pc.equal(label, todo.column("true_label")),
                "decision_threshold": pa.array([float(value)] * todo.num_rows, pa.float64()),
                "threshold_source": pa.array([source] * todo.num_rows, pa.string()),
            }
        )
        self._count(
            self.summary.updated_rows,
            PREDICTIONS,
            self.lh.update_columns(
                PREDICTIONS,
                updates,
                ["predicted_label", "is_correct", "decision_threshold", "threshold_source"],
                run_id=self.run_id,
                stage="redecide",
            ),
        )
        self.summary.redecided = todo.num_rows
        names = dict(
            zip(
                *[
                    self.lh.read(SILVER, ["image_id", "filename"]).column(c).to_pylist()
                    for c in ("image_id", "filename")
                ],
                strict=True,
            )
        )
        before = todo.column("predicted_label").to_pylist()
        for image_id, old, new in zip(
            todo.column("image_id").to_pylist(), before, label.to_pylist(), strict=True
        ):
            if old != new:
                self.summary.label_changes.append(
                    {
                        "image_id": image_id,
                        "filename": names.get(image_id),
                        "from": schemas.LABEL_NAMES[old] if old is not None else None,
                        "to": schemas.LABEL_NAMES[new],
                    }
                )

    # ---------------------------------------------------------------- performance
    def performance(self) -> None:
        """Append metrics per labelled split when this set of predictions is new."""
        self._state(
            "silver",
            "predictions",
            "performance",
            columns={"predictions": rules.EVALUATION_COLUMNS},
        )
        evaluated = self._rule(rules.EVALUATION_INPUT)
        threshold = self.threshold.threshold if self.threshold else self.model.threshold
        self._sql.register("evaluations", metrics.model_performance(evaluated, threshold=threshold))
        self._insert(PERFORMANCE, self._rule(rules.PERFORMANCE_INSERTS))

    # ---------------------------------------------------------------- drift
    def drift(self) -> None:
        """MERGE the current model's ``gold.drift_metrics`` rows that are new or changed
        (`rules.DRIFT_METRICS`; an unchanged lakehouse writes nothing)."""
        self._sql.register(
            "predictions", self.lh.read(PREDICTIONS, list(rules.DRIFT_PREDICTION_COLUMNS))
        )
        self._sql.register(
            "silver", self.lh.read(SILVER, ["image_id", "content_sha256", "quality_score"])
        )
        self._sql.register("drift", self.lh.read(schemas.DRIFT_METRICS))
        reference = rules.drift_reference_rows(
            self.model.name, self.model.version, self.model.drift_reference
        )
        self._sql.register("drift_reference", reference)
        rows = self._rule(rules.DRIFT_METRICS)
        if rows.num_rows:
            computed = pa.array([identity.utc_now()] * rows.num_rows, schemas.TS)
            rows = rows.append_column("computed_at", computed)
            self._upsert(
                schemas.DRIFT_METRICS, rows.cast(schemas.GOLD_DRIFT_METRICS), stage="drift"
            )

    # ---------------------------------------------------------------- summary
    def finish(self) -> RunSummary:
        """Fill in totals, quarantine reasons and latest metrics; return the summary."""
        for counts in (self.summary.new_rows, self.summary.updated_rows, self.summary.deleted_rows):
            for spec in schemas.TABLES:
                counts.setdefault(spec.qualified_name, 0)
        for spec in schemas.TABLES:
            self.summary.total_rows[spec.qualified_name] = self.lh.count(spec)
        reasons = self.lh.read(QUARANTINE, ["reason"]).column(0).to_pylist()
        self.summary.quarantine_reasons = dict(collections.Counter(reasons))
        perf = self.lh.read(
            PERFORMANCE,
            filter={"model_name": self.model.name, "model_version": self.model.version},
        )
        latest: dict[str, dict[str, Any]] = {}
        for row in sorted(perf.to_pylist(), key=lambda r: (r["evaluated_at"], r["evaluation_id"])):
            latest[row["dataset_split"]] = row
        keep = (
            "dataset_split",
            "total_samples",
            "accuracy",
            "precision",
            "recall",
            "f1_score",
            "auc_roc",
        )
        self.summary.metrics = [
            {k: latest[s][k] for k in keep}
            | {"confusion_matrix": json.loads(latest[s]["confusion_matrix"])}
            for s in sorted(latest)
        ]
        from cxrlake.training.provenance import development_share

        films = self.lh.read(
            schemas.SILVER, ["dataset_split", "label_name", "filename", "content_sha256"]
        )
        films = films.filter(pc.is_valid(films["label_name"]))
        share = development_share(films, self.model.path)
        self.summary.development_films = {k: list(v) for k, v in sorted(share.items())}
        if self.threshold is not None:
            self.summary.threshold, self.summary.threshold_source = (
                self.threshold.threshold,
                self.threshold.source,
            )
        else:
            self.summary.threshold = self.model.threshold
        return self.summary

    def timed(self, stage: str, fn: Any, *args: Any) -> None:
        """Run one stage and record its wall-clock seconds in the summary."""
        start = time.perf_counter()
        fn(*args)
        self.summary.stage_seconds[stage] = round(time.perf_counter() - start, 3)


def _accepted_files(listing_rows: pa.Table) -> int:
    """Listing rows bronze may take: not rejected, and their image id claimed by no other."""
    counts = pc.value_counts(listing_rows.column("image_id"))
    single = counts.field("values").filter(pc.equal(counts.field("counts"), 1))
    ok = listing_rows.filter(pc.is_null(listing_rows.column("reject_reason")))
    return int(pc.sum(pc.is_in(ok.column("image_id"), single).cast(pa.int64())).as_py() or 0)


def run_pipeline(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    lakehouse: str | os.PathLike,
    env: str = "dev",
    *,
    sample_per_label: int | None = None,
    model: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    progress: bool | None = None,
    site: str | None = None,
    commit_rows: int = COMMIT_ROWS,
) -> RunSummary:
    """Run bronze -> silver -> gold on image folders; return the run summary.

    ``sources``: one folder or a list of folders of images (``<split>/<NORMAL|PNEUMONIA>/<file>``
    or ``<LABEL>/<file>``; anything else is ingested unlabelled; files whose names are not image
    names, e.g. ``.txt``, are skipped and counted). ``lakehouse``: root folder of the Delta tables.
    ``sample_per_label``: ingest at most N files per (split, label), a deterministic sample.
    ``model``: `cxrlake.Model`, path or None (= `cxrlake.default_model_path()`).
    ``batch_size``: images per batch handed to the core. ``commit_rows``: rows a stage holds
    for a table before it commits them (it commits the rest when it ends). ``progress``: show
    tqdm bars (None = when stderr is a terminal). ``site``: decide labels with that site's
    threshold in ``gold.site_thresholds`` for this model version (``cxrlake calibrate``), the
    model's own when none is stored. Waits for any other run on the same lakehouse to finish first.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ValueError("at least one source folder is required")
    for source in sources:
        if not os.path.isdir(source):
            raise FileNotFoundError(f"source is not a directory: {source}")
    pipeline = Pipeline(lakehouse, env, model, batch_size, threads, progress, site, commit_rows)
    with LakehouseLock(pipeline.lh.root, pipeline.lh.env):
        try:
            pipeline.lh.create_all()
            pipeline.lh.record_sources(sources)
            pipeline.timed("listing", pipeline.list_sources, sources, sample_per_label)
            pipeline.timed("bronze", pipeline.bronze)
            pipeline.timed("silver+gold", pipeline.silver_gold)
            pipeline.timed("performance", pipeline.performance)
            pipeline.timed("drift", pipeline.drift)
            return pipeline.finish()
        finally:
            pipeline._stop_ahead()
