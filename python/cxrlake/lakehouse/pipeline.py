"""The local bronze -> silver -> gold pipeline (``cxrlake pipeline run``).

Each stage works out what is left to do from the tables themselves (an anti-join on keys), then
writes in batches, one atomic Delta commit per batch. So a run that was killed at any point is
resumed by the next run, a re-run with nothing new writes nothing, and a run holding the
lakehouse lock excludes any other run on the same catalog.

Stages:

1. bronze: list the sources (regular files only), skip files whose (path, size, mtime) is already
   in bronze, read and hash the rest, append rows whose (image_id, content_sha256) is new.
2. silver: for the latest bronze version of every image not yet in silver (or quarantined) with
   that hash, decode through the Rust core; MERGE good rows into ``silver.xray_metadata`` and
   ``silver.image_features`` on image_id, failures into ``silver.quarantine``.
3. gold: score silver images that have no prediction for (model, content hash) yet; MERGE into
   ``gold.pneumonia_predictions`` on (image_id, model_name, model_version).
4. performance: per labelled split, metrics over the current predictions; appended only when
   that exact set of predictions has not been evaluated yet (deterministic ``evaluation_id``).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from cxrlake.lakehouse import listing, schemas, transforms
from cxrlake.lakehouse.schemas import BRONZE, FEATURES, PERFORMANCE, PREDICTIONS, QUARANTINE, SILVER
from cxrlake.lakehouse.storage import Lakehouse, LakehouseLock

DEFAULT_BATCH_SIZE = 64
"""Images per Arrow batch handed to the Rust core and per Delta commit."""


@dataclass
class RunSummary:
    """What one pipeline run did and what the lakehouse holds afterwards."""

    run_id: str
    lakehouse: str
    env: str
    model_name: str = ""
    model_version: str = ""
    files_listed: int = 0
    files_skipped_unchanged: int = 0
    new_rows: dict[str, int] = field(default_factory=dict)
    total_rows: dict[str, int] = field(default_factory=dict)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    """Rows quarantined by this run: file_path, stage, reason."""
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    """Whole quarantine table: count per reason."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Latest gold.model_performance row per split for the run's model."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``cxrlake pipeline run --json``)."""
        return {
            k: getattr(self, k)
            for k in self.__dataclass_fields__  # noqa: SIM118 - dataclass field order
        }

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"cxrlake pipeline run {self.run_id}",
            f"  lakehouse: {schemas.catalog_path(self.lakehouse, self.env)}",
            f"  model:     {self.model_name} {self.model_version}",
            f"  files:     {self.files_listed} listed, "
            f"{self.files_skipped_unchanged} unchanged since last run",
            "  tables (new rows this run / total rows):",
        ]
        for spec in schemas.TABLES:
            name = spec.qualified_name
            lines.append(
                f"    {name:<28} {self.new_rows.get(name, 0):>7} / "
                f"{self.total_rows.get(name, 0):>7}"
            )
        lines.append(f"  quarantined this run: {len(self.quarantined)}")
        for q in self.quarantined[:20]:
            lines.append(f"    [{q['stage']}] {q['file_path']}: {q['reason']}")
        if len(self.quarantined) > 20:
            lines.append(f"    ... and {len(self.quarantined) - 20} more")
        if self.quarantine_reasons:
            lines.append("  quarantine table by reason:")
            for reason, n in sorted(self.quarantine_reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {n:>5}  {reason}")
        if self.metrics:
            lines.append("  model performance (latest evaluation per labelled split):")
            lines.append(
                f"    {'split':<22} {'n':>6} {'acc':>6} {'prec':>6} {'recall':>6} "
                f"{'f1':>6} {'auc':>6}"
            )
            for m in self.metrics:
                auc = "-" if m["auc_roc"] is None else f"{m['auc_roc']:.3f}"
                lines.append(
                    f"    {m['dataset_split']:<22} {m['total_samples']:>6} "
                    f"{m['accuracy']:>6.3f} {m['precision']:>6.3f} {m['recall']:>6.3f} "
                    f"{m['f1_score']:>6.3f} {auc:>6}"
                )
        return "\n".join(lines)


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: sortable and unique per run."""
    return transforms.utc_now().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def _batched(items: Sequence[Any] | Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(total: int, desc: str, enabled: bool | None) -> tqdm:
    # enabled=None: tqdm decides (shown on a terminal, hidden when stderr is not a TTY)
    return tqdm(
        total=total, desc=desc, unit="img", disable=None if enabled is None else not enabled
    )


def _pairs(table: pa.Table, first: str = "image_id", second: str = "content_sha256") -> set:
    """The set of (first, second) value pairs of a table, e.g. (image_id, content_sha256)."""
    return set(zip(table.column(first).to_pylist(), table.column(second).to_pylist(), strict=True))


def _us(ts: Any) -> int:
    return int(ts.timestamp() * 1_000_000) if ts is not None else -1


def _ts_from_us(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)


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
    ) -> None:
        import cxrlake

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lh = Lakehouse(lakehouse, env)
        self.model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)
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

    def _add_new(self, spec: schemas.TableSpec, n: int) -> None:
        key = spec.qualified_name
        self.summary.new_rows[key] = self.summary.new_rows.get(key, 0) + n

    # ---------------------------------------------------------------- bronze
    def bronze(self, sources: Sequence[str | os.PathLike], sample: int | None = None) -> None:
        """List ``sources`` and append new or changed files to bronze (see module docstring)."""
        files: dict[str, listing.SourceFile] = {}
        rejected: dict[str, str] = {}
        for source in sources:
            for item in listing.walk(source):
                if isinstance(item, listing.SourceFile):
                    files[item.path] = item
                else:
                    rejected[item.path] = item.reason
        chosen = list(files.values())
        if sample is not None:
            chosen = listing.sample_per_label(chosen, sample)
        self.summary.files_listed = len(chosen) + len(rejected)

        state = self.lh.read(
            BRONZE,
            ["image_id", "content_sha256", "file_path", "file_size_bytes", "source_modified_at"],
        )
        # (path, size, mtime) of every version already ingested: such a file is not read again
        seen_stat = set(
            zip(
                state.column("file_path").to_pylist(),
                state.column("file_size_bytes").to_pylist(),
                [_us(t) for t in state.column("source_modified_at").to_pylist()],
                strict=True,
            )
        )
        known = set(
            zip(
                state.column("image_id").to_pylist(),
                state.column("content_sha256").to_pylist(),
                strict=True,
            )
        )
        todo = [f for f in chosen if (f.path, f.size, f.mtime_us) not in seen_stat]
        self.summary.files_skipped_unchanged = len(chosen) - len(todo)

        with _progress(len(todo), "bronze", self.progress) as bar:
            for group in _batched(todo, self.batch_size):
                rows: dict[str, list[Any]] = {
                    "path": [],
                    "modificationTime": [],
                    "length": [],
                    "content": [],
                }
                for f in group:
                    try:
                        content = listing.read_regular_file(f.path)
                    except OSError as e:
                        rejected[f.path] = e.strerror or str(e)
                        continue
                    rows["path"].append(f.path)
                    rows["modificationTime"].append(_ts_from_us(f.mtime_us))
                    rows["length"].append(len(content))
                    rows["content"].append(content)
                bar.update(len(group))
                if not rows["path"]:
                    continue
                batch = transforms.bronze_batch(pa.RecordBatch.from_pydict(rows), self.run_id)
                keep = []
                for i, key in enumerate(
                    zip(
                        batch.column("image_id").to_pylist(),
                        batch.column("content_sha256").to_pylist(),
                        strict=True,
                    )
                ):
                    if key not in known:
                        known.add(key)
                        keep.append(i)
                new = batch.take(pa.array(keep, pa.int64()))
                self._add_new(BRONZE, self.lh.append(BRONZE, new, run_id=self.run_id))
        self._quarantine_rejected(rejected)

    def _quarantine_rejected(self, rejected: dict[str, str]) -> None:
        if not rejected:
            return
        current = {
            r["image_id"]: (r["file_path"], r["reason"])
            for r in self.lh.read(QUARANTINE, ["image_id", "file_path", "reason"]).to_pylist()
        }
        paths, reasons = [], []
        for path, reason in sorted(rejected.items()):
            ident = transforms.identify(path)
            if current.get(ident.image_id) != (path, reason):
                paths.append(path)
                reasons.append(reason)
        batch = transforms.listing_quarantine_batch(paths, reasons, self.run_id)
        result = self.lh.merge(QUARANTINE, batch, run_id=self.run_id, stage="listing")
        self._add_new(QUARANTINE, int(result["num_target_rows_inserted"]))
        for path, reason in zip(paths, reasons, strict=True):
            self.summary.quarantined.append(
                {"file_path": path, "stage": "listing", "reason": reason}
            )

    # ---------------------------------------------------------------- silver
    def _bronze_latest(self) -> dict[str, dict[str, Any]]:
        """Latest bronze version per image_id (by ingestion time, then path and hash)."""
        meta = self.lh.read(
            BRONZE, ["image_id", "content_sha256", "file_path", "ingested_at", "category"]
        )
        rows = sorted(
            meta.to_pylist(),
            key=lambda r: (r["image_id"], r["ingested_at"], r["file_path"], r["content_sha256"]),
        )
        return {r["image_id"]: r for r in rows}

    def _bronze_contents(
        self, wanted: set[tuple[str, str]], columns: list[str]
    ) -> Iterator[pa.RecordBatch]:
        """Stream bronze rows (with content) for (image_id, content_sha256) pairs, in batches."""
        if not wanted:
            return
        shas = pa.array(sorted({sha for _, sha in wanted}), pa.string())
        cols = list(dict.fromkeys(["image_id", "content_sha256", *columns]))
        emitted: set[tuple[str, str]] = set()
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in self.lh.scan_batches(
            BRONZE, cols, pc.field("content_sha256").isin(shas), self.batch_size
        ):
            keep = []
            for i, key in enumerate(
                zip(
                    batch.column("image_id").to_pylist(),
                    batch.column("content_sha256").to_pylist(),
                    strict=True,
                )
            ):
                if key in wanted and key not in emitted:
                    emitted.add(key)
                    keep.append(i)
            if not keep:
                continue
            pending.append(batch.take(pa.array(keep, pa.int64())))
            pending_rows += len(keep)
            if pending_rows >= self.batch_size:
                yield from pa.Table.from_batches(pending).to_batches(max_chunksize=self.batch_size)
                pending, pending_rows = [], 0
        if pending:
            yield from pa.Table.from_batches(pending).to_batches(max_chunksize=self.batch_size)

    def silver(self) -> None:
        """Decode and validate bronze images not yet in silver or quarantine (see module doc)."""
        latest = self._bronze_latest()
        meta = self.lh.read(SILVER, ["image_id", "content_sha256"])
        feats = self.lh.read(FEATURES, ["image_id", "content_sha256"])
        quar = self.lh.read(QUARANTINE, ["image_id", "content_sha256", "stage"])
        done = _pairs(meta) & _pairs(feats)
        failed = {
            (r["image_id"], r["content_sha256"]) for r in quar.to_pylist() if r["stage"] == "silver"
        }
        quarantined_ids = set(quar.column("image_id").to_pylist())
        silver_ids = set(meta.column("image_id").to_pylist())
        wanted = {
            (image_id, r["content_sha256"])
            for image_id, r in latest.items()
            if (image_id, r["content_sha256"]) not in done | failed
        }
        columns = list(schemas.BRONZE_METADATA.names)
        with _progress(len(wanted), "silver", self.progress) as bar:
            for batch in self._bronze_contents(wanted, columns):
                out = transforms.silver_batch(batch, model=self.model, threads=self.threads)
                meta_ids = out.metadata.column("image_id").to_pylist()
                quar_ids = out.quarantine.column("image_id").to_pylist()
                # features first: metadata is the marker that an image is complete in silver
                self.lh.merge(FEATURES, out.features, run_id=self.run_id, stage="silver")
                r = self.lh.merge(SILVER, out.metadata, run_id=self.run_id, stage="silver")
                self._add_new(SILVER, int(r["num_target_rows_inserted"]))
                self._add_new(FEATURES, int(r["num_target_rows_inserted"]))
                r = self.lh.merge(QUARANTINE, out.quarantine, run_id=self.run_id, stage="silver")
                self._add_new(QUARANTINE, int(r["num_target_rows_inserted"]))
                for q in out.quarantine.to_pylist():
                    self.summary.quarantined.append(
                        {"file_path": q["file_path"], "stage": "silver", "reason": q["reason"]}
                    )
                # a file that now decodes leaves quarantine; one that now fails leaves silver
                self.lh.delete_keys(
                    QUARANTINE,
                    "image_id",
                    [i for i in meta_ids if i in quarantined_ids],
                    run_id=self.run_id,
                )
                stale = [i for i in quar_ids if i in silver_ids]
                self.lh.delete_keys(SILVER, "image_id", stale, run_id=self.run_id)
                self.lh.delete_keys(FEATURES, "image_id", stale, run_id=self.run_id)
                bar.update(batch.num_rows)

    # ---------------------------------------------------------------- gold
    def gold(self) -> None:
        """Score silver images that have no prediction for this model and content yet."""
        silver = self.lh.read(SILVER, ["image_id", "content_sha256", "label", "dataset_split"])
        name, version = self.model.name, self.model.version
        preds = self.lh.read(
            PREDICTIONS,
            ["image_id", "content_sha256"],
            filter=(pc.field("model_name") == name) & (pc.field("model_version") == version),
        )
        done = _pairs(preds)
        labels = {r["image_id"]: r for r in silver.to_pylist()}
        wanted = {
            (r["image_id"], r["content_sha256"])
            for r in labels.values()
            if (r["image_id"], r["content_sha256"]) not in done
        }
        with _progress(len(wanted), "gold", self.progress) as bar:
            for batch in self._bronze_contents(wanted, ["content"]):
                ids = batch.column("image_id").to_pylist()
                batch = batch.append_column(
                    "label", pa.array([labels[i]["label"] for i in ids], pa.int32())
                ).append_column(
                    "dataset_split",
                    pa.array([labels[i]["dataset_split"] for i in ids], pa.string()),
                )
                out = transforms.gold_predictions_batch(
                    batch, model=self.model, threads=self.threads
                )
                r = self.lh.merge(PREDICTIONS, out, run_id=self.run_id, stage="gold")
                self._add_new(PREDICTIONS, int(r["num_target_rows_inserted"]))
                bar.update(batch.num_rows)

    def performance(self) -> None:
        """Append metrics per labelled split when this set of predictions is new."""
        silver = self.lh.read(SILVER, ["image_id", "content_sha256", "dataset_split"])
        current = _pairs(silver)
        name, version = self.model.name, self.model.version
        preds = self.lh.read(
            PREDICTIONS,
            [
                "prediction_id",
                "image_id",
                "content_sha256",
                "model_name",
                "model_version",
                "dataset_split",
                "true_label",
                "predicted_label",
                "prediction_probability",
            ],
            filter=(pc.field("model_name") == name) & (pc.field("model_version") == version),
        )
        mask = [
            (i, s) in current
            for i, s in zip(
                preds.column("image_id").to_pylist(),
                preds.column("content_sha256").to_pylist(),
                strict=True,
            )
        ]
        preds = preds.filter(pa.array(mask, pa.bool_()))
        rows = transforms.model_performance(preds, threshold=self.model.threshold)
        existing = set(self.lh.read(PERFORMANCE, ["evaluation_id"]).column(0).to_pylist())
        keep = [
            i for i, e in enumerate(rows.column("evaluation_id").to_pylist()) if e not in existing
        ]
        new = rows.take(pa.array(keep, pa.int64()))
        self._add_new(PERFORMANCE, self.lh.append(PERFORMANCE, new, run_id=self.run_id))

    # ---------------------------------------------------------------- summary
    def finish(self) -> RunSummary:
        """Fill in totals, quarantine reasons and latest metrics; return the summary."""
        self.summary.new_rows = {
            s.qualified_name: self.summary.new_rows.get(s.qualified_name, 0) for s in schemas.TABLES
        }
        for spec in schemas.TABLES:
            self.summary.total_rows[spec.qualified_name] = self.lh.count(spec)
        reasons = self.lh.read(QUARANTINE, ["reason"]).column(0).to_pylist()
        self.summary.quarantine_reasons = dict(collections.Counter(reasons))
        perf = self.lh.read(PERFORMANCE).to_pylist()
        latest: dict[str, dict[str, Any]] = {}
        for row in sorted(perf, key=lambda r: (r["evaluated_at"], r["evaluation_id"])):
            if (row["model_name"], row["model_version"]) == (
                self.model.name,
                self.model.version,
            ):
                latest[row["dataset_split"]] = row
        self.summary.metrics = [
            {
                k: v
                for k, v in latest[s].items()
                if k
                in (
                    "dataset_split",
                    "total_samples",
                    "accuracy",
                    "precision",
                    "recall",
                    "f1_score",
                    "auc_roc",
                )
            }
            | {"confusion_matrix": json.loads(latest[s]["confusion_matrix"])}
            for s in sorted(latest)
        ]
        return self.summary


def run_pipeline(
    sources: Sequence[str | os.PathLike],
    lakehouse: str | os.PathLike,
    env: str = "dev",
    *,
    sample_per_label: int | None = None,
    model: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Run bronze -> silver -> gold on image folders; return the run summary.

    ``sources``: folders of images (``<split>/<NORMAL|PNEUMONIA>/<file>`` or ``<LABEL>/<file>``;
    anything else is ingested unlabelled). ``lakehouse``: root folder of the Delta tables.
    ``sample_per_label``: ingest at most N files per (split, label), a deterministic sample.
    ``model``: `cxrlake.Model`, path or None (= `cxrlake.default_model_path()`).
    ``batch_size``: images per batch and per commit. ``progress``: show tqdm bars (None = when
    stderr is a terminal). Waits for any other run on the same lakehouse to finish first.
    """
    if not sources:
        raise ValueError("at least one source folder is required")
    for source in sources:
        if not os.path.isdir(source):
            raise FileNotFoundError(f"source is not a directory: {source}")
    pipeline = Pipeline(lakehouse, env, model, batch_size, threads, progress)
    with LakehouseLock(pipeline.lh.root, pipeline.lh.env):
        pipeline.lh.create_all()
        pipeline.lh.record_sources(sources)
        pipeline.bronze(sources, sample_per_label)
        pipeline.silver()
        pipeline.gold()
        pipeline.performance()
        return pipeline.finish()
