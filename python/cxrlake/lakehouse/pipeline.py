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
5. drift: the current model's ``gold.drift_metrics`` rows that are new or changed.

The performance and drift rows, the summary's latest metrics and its development-film share come
from the engine-neutral services (`cxrlake.metrics_service`, `cxrlake.provenance`) over a
`LocalCatalog` of the same tables; this module writes their rows with the run's commit metadata.
The run summary is `run_summary.RunSummary`; the look-ahead is `analysis_feed`.

A run killed at any point leaves images outside their end state; the next run selects and
finishes them (see `cxrlake.medallion.rules`). A run holding the lakehouse lock excludes any other
run on the same catalog.
"""

from __future__ import annotations

import collections
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from cxrlake import metrics_service, provenance
from cxrlake.catalog import Relation, materialize
from cxrlake.files import skip_summary
from cxrlake.lakehouse import listing
from cxrlake.lakehouse.analysis_feed import Lookahead, bronze_contents, only_keys, row_keys
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.lakehouse.run_summary import LabelChange, RunSummary
from cxrlake.lakehouse.site_thresholds import site_threshold
from cxrlake.lakehouse.storage import Lakehouse, LakehouseLock
from cxrlake.medallion import identity, rules, schemas, transforms
from cxrlake.medallion.schemas import BRONZE, PERFORMANCE, PREDICTIONS, QUARANTINE, SILVER
from cxrlake.model import Model
from cxrlake.threshold import SiteThreshold

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
rows exist; this only changes when the work is done, and each image is still decoded once
(`cxrlake.lakehouse.analysis_feed`)."""

_STAGE_OF = {
    "features": "silver",
    "silver": "silver",
    "predictions": "gold",
    "quarantine": "silver",
}


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: sortable and unique per run."""
    return identity.utc_now().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def _progress(total: int, desc: str, enabled: bool | None) -> tqdm:
    # enabled=None: tqdm decides (shown on a terminal, hidden when stderr is not a TTY)
    return tqdm(
        total=total, desc=desc, unit="img", disable=None if enabled is None else not enabled
    )


class RunCatalog(LocalCatalog):
    """The run's tables through the catalog port, a rule's SQL run on the run's own DuckDB
    connection: a fresh connection per rule (`LocalCatalog.query`) costs 70-100 ms with DuckDB
    2.0, a registered Arrow relation about 1 ms. The relations replace the run's views of the same
    names; each stage registers the views it reads before its rules run."""

    def __init__(self, lakehouse: Lakehouse, con: duckdb.DuckDBPyConnection) -> None:
        super().__init__(lakehouse)
        self.con = con

    def query(self, sql: str, relations: Mapping[str, Relation]) -> pa.Table:
        for name, table in materialize(self, relations).items():
            self.con.register(name, table)
        return self.con.sql(sql).to_arrow_table()


class Pipeline:
    """One run over one lakehouse; use `run_pipeline` unless you need the stages one by one."""

    def __init__(
        self,
        lakehouse: str | os.PathLike[str],
        env: str = "dev",
        model: Model | str | os.PathLike[str] | None = None,
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
        self.threshold: SiteThreshold | None = None
        self.site = site
        if site:
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
        # new bronze rows of this run analysed ahead (see `AHEAD_BYTES`)
        self.ahead = Lookahead(self.model, threads, self.threshold, AHEAD_BYTES, AHEAD_ROWS)
        self.listing = rules.LISTING_SCHEMA.empty_table()
        self._sql = duckdb.connect()
        self.catalog = RunCatalog(self.lh, self._sql)  # the services' view of the same tables
        self._sql.register("model", metrics_service.model_view(self.model))

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
    def list_sources(self, sources: Sequence[str | os.PathLike[str]], sample: int | None) -> None:
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
        self.listing = listing.listing_table(
            list(self.sources.values()), rejected, self.identity_roots
        )
        self._sql.register("listing", self.listing)

    # ---------------------------------------------------------------- bronze
    def bronze(self) -> None:
        """Append new file versions to bronze; hold rejected entries and collisions."""
        self._state("bronze")
        to_read = self._rule(rules.BRONZE_TO_READ)
        # files held at listing (identity collisions) are neither read nor unchanged
        self.summary.files_skipped_unchanged = (
            listing.accepted_count(self.listing) - to_read.num_rows
        )
        unreadable: dict[str, str] = {}
        stat_updates: list[pa.Table] = []
        pending: list[pa.Table] = []
        paths = to_read.column("file_path").to_pylist()
        with _progress(len(paths), "bronze", self.progress) as bar:
            for start in range(0, len(paths), self.batch_size):
                group = [self.sources[p] for p in paths[start : start + self.batch_size]]
                binary_files, failed = listing.read_binary_files(group)
                unreadable |= failed
                bar.update(len(group))
                if binary_files is None:
                    continue
                incoming = transforms.bronze_batch(
                    binary_files, self.run_id, roots=self.identity_roots
                )
                # the rules see the keys; the bytes stay in Arrow (no copy through DuckDB)
                self._sql.register("incoming", incoming.drop_columns(["content"]))
                new = row_keys(self._rule(rules.BRONZE_INSERTS))
                pending.append(pa.table(incoming).filter(pc.is_in(row_keys(incoming), new)))
                self.ahead.start(pending[-1])
                if sum(t.num_rows for t in pending) >= self.commit_rows or (
                    sum(t.column("content").nbytes for t in pending) >= COMMIT_BYTES
                ):
                    self._insert_bronze(pending)
                    pending = []
                stat_updates.append(self._rule(rules.BRONZE_STAT_UPDATES))
        self._insert_bronze(pending)
        if stat_updates:
            self._update_stats(pa.concat_tables(stat_updates))
        if unreadable:
            self._hold_unreadable(unreadable)
        self._hold_at_listing()

    def _update_stats(self, updates: pa.Table) -> None:
        """Record the new (path, size, mtime) of known bytes (`rules.BRONZE_STAT_UPDATES`)."""
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

    def _hold_unreadable(self, unreadable: dict[str, str]) -> None:
        """Move files that could not be read from the sources to the rejected entries."""
        held = self.listing.filter(pc.is_valid(self.listing.column("reject_reason")))
        rejected = dict(
            zip(
                held.column("file_path").to_pylist(),
                held.column("reject_reason").to_pylist(),
                strict=True,
            )
        )
        for p in unreadable:
            self.sources.pop(p)
        self._set_listing(rejected | unreadable)

    def _insert_bronze(self, pending: list[pa.Table]) -> None:
        """Append new bronze rows in one commit."""
        if pending:
            self._insert(BRONZE, pa.concat_tables(pending))

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

        ahead, todo_here = self.ahead.take(todo)

        def analyses() -> Iterator[transforms.AnalyzedBatches]:
            while ahead:
                analysis, keys = ahead.pop(0)
                yield only_keys(analysis.result(), keys)
            for batch in bronze_contents(self.lh, todo_here, self.batch_size):
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
        self.ahead.stop()
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
        value, source = self._decision()
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
        self.summary.label_changes.extend(self._label_changes(todo, label))

    def _label_changes(self, todo: pa.Table, label: pa.Array) -> list[LabelChange]:
        """The films of ``todo`` (re-decided predictions) whose label ``label`` changes."""
        films = self.lh.read(SILVER, ["image_id", "filename"])
        names = dict(
            zip(
                films.column("image_id").to_pylist(),
                films.column("filename").to_pylist(),
                strict=True,
            )
        )
        before = todo.column("predicted_label").to_pylist()
        return [
            {
                "image_id": image_id,
                "filename": names.get(image_id),
                "from": schemas.LABEL_NAMES[old] if old is not None else None,
                "to": schemas.LABEL_NAMES[new],
            }
            for image_id, old, new in zip(
                todo.column("image_id").to_pylist(), before, label.to_pylist(), strict=True
            )
            if old != new
        ]

    # ---------------------------------------------------------------- gold metrics
    def _decision(self) -> tuple[float, str]:
        """The threshold deciding this run's labels and its ``threshold_source``."""
        if self.threshold is not None:
            return self.threshold.threshold, self.threshold.source
        return self.model.threshold, "model"

    def performance(self) -> None:
        """Append metrics per labelled split when this set of predictions is new
        (`metrics_service.performance_rows`)."""
        threshold, _ = self._decision()
        self._insert(
            PERFORMANCE, metrics_service.performance_rows(self.catalog, self.model, threshold)
        )

    def drift(self) -> None:
        """MERGE the current model's ``gold.drift_metrics`` rows that are new or changed
        (`metrics_service.drift_rows`; an unchanged lakehouse writes nothing)."""
        rows = metrics_service.drift_rows(self.catalog, self.model)
        if rows.num_rows:
            self._upsert(schemas.DRIFT_METRICS, rows, stage="drift")

    # ---------------------------------------------------------------- summary
    def finish(self) -> RunSummary:
        """Fill in totals, quarantine reasons, latest metrics and the development-film share of
        each labelled split; return the summary."""
        for counts in (self.summary.new_rows, self.summary.updated_rows, self.summary.deleted_rows):
            for spec in schemas.TABLES:
                counts.setdefault(spec.qualified_name, 0)
        for spec in schemas.TABLES:
            self.summary.total_rows[spec.qualified_name] = self.lh.count(spec)
        reasons = self.lh.read(QUARANTINE, ["reason"]).column(0).to_pylist()
        self.summary.quarantine_reasons = dict(collections.Counter(reasons))
        self.summary.metrics = metrics_service.latest_performance(
            self.catalog, self.model.name, self.model.version
        )
        share = provenance.catalog_share(self.catalog, self.model.path)
        self.summary.development_films = {k: list(v) for k, v in sorted(share.items())}
        self.summary.threshold, self.summary.threshold_source = self._decision()
        return self.summary

    def timed(self, stage: str, fn: Callable[..., None], *args: object) -> None:
        """Run one stage and record its wall-clock seconds in the summary."""
        start = time.perf_counter()
        fn(*args)
        self.summary.stage_seconds[stage] = round(time.perf_counter() - start, 3)


def run_pipeline(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    lakehouse: str | os.PathLike[str],
    env: str = "dev",
    *,
    sample_per_label: int | None = None,
    model: Model | str | os.PathLike[str] | None = None,
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
            pipeline.ahead.stop()
