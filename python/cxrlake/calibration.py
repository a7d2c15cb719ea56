"""Site calibration: a per-site operating point chosen from the site's own labelled films.

The shipped threshold (ONNX metadata ``cxrlake.threshold``) is chosen on simulated acquisition
shifts; a real site should confirm or replace it with its own films. ``cxrlake calibrate``:

1. selects the site's labelled films in ``bronze.kaggle_xray_metadata`` (latest version of each
   image; labels from the NORMAL/PNEUMONIA folders, or the radiologists' current labels from
   ``silver.label_history`` with ``--labels verdicts``);
2. refuses, naming the problem, when the films cannot support a threshold: a single class, too
   few films of a class for the target sensitivity, or contradicting labels (the same bytes under
   both folders, or a radiologist label that contradicts the folder);
3. refuses films from the model's development set (``models/development_films.sha256``, the
   films it was trained and validated on: by bytes or by patient), since figures on them measure
   how the model fits its own training films, not how it performs at the site; with
   ``include_development_films`` (``--include-development-films``) they are kept and the report
   carries that warning, and the stored row's ``selection`` records how many there were;
4. scores them with the model (`cxrlake.predict`, on the bytes held in bronze);
5. picks the highest threshold whose sensitivity on those films is >= the target, and reports
   sensitivity and specificity with 95 % Wilson intervals and the films a tighter interval needs;
6. appends a new version of the site's threshold to ``gold.site_thresholds`` (one atomic Delta
   commit; an identical re-run writes nothing).

`site_threshold` reads the latest version back; ``cxrlake.predict(..., threshold=...)`` and the
gold stage of the pipeline use it, and record which threshold decided each label
(``threshold``, ``threshold_source``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.exceptions import CxrlakeError
from cxrlake.medallion import schemas
from cxrlake.threshold import SiteThreshold

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054
DEFAULT_MIN_PER_CLASS = 30
DEFAULT_HALF_WIDTH = 0.025
LABEL_NAMES = schemas.LABEL_NAMES

SITE_THRESHOLDS_SCHEMA = schemas.GOLD_SITE_THRESHOLDS
"""``gold.site_thresholds`` (defined with the other tables in `cxrlake.medallion.schemas`)."""


class CalibrationError(CxrlakeError, ValueError):
    """The site's films cannot support a threshold; the message says why and what to do."""


def site_thresholds_spec():
    """The `TableSpec` of ``gold.site_thresholds`` (keys: site, model, version)."""
    return schemas.SITE_THRESHOLDS


# ---------------------------------------------------------------------------------------------
# Statistics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def films_for_half_width(proportion: float, half_width: float, z: float = Z95) -> int:
    """Smallest n whose Wilson interval around ``proportion`` is at most +-``half_width`` wide."""
    if not 0.0 < half_width < 0.5:
        raise ValueError(f"half width must be in (0, 0.5), got {half_width}")
    n = 1
    while n < 10_000_000:
        low, high = wilson_interval(round(proportion * n), n, z)
        if (high - low) / 2.0 <= half_width:
            return n
        n = n + 1 if n < 100 else int(n * 1.02) + 1
    return n


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity on (labels, scores) is >= ``target``.

    Placed midway between the last pneumonia film it must keep and the next lower score, so a
    tiny numeric difference (another build, another resize) does not flip that film.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.sort(scores[labels])[::-1]
    needed = min(max(int(math.ceil(target * len(positives) - 1e-9)), 1), len(positives))
    threshold = positives[needed - 1]
    below = scores[scores < threshold]
    return float((threshold + below.max()) / 2.0) if len(below) else float(threshold)


@dataclass(frozen=True)
class CalibrationResult:
    """What ``cxrlake calibrate`` found (and stored, unless a dry run)."""

    site_id: str
    model_name: str
    model_version: str
    threshold: float
    shipped_threshold: float
    target_sensitivity: float
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    n_pneumonia: int
    n_normal: int
    unscored: int
    label_source: str
    half_width: float
    pneumonia_films_needed: int
    normal_films_needed: int
    calibration_id: str
    version: int | None = None
    stored: bool = False
    development_films: int = 0

    def report(self) -> str:
        """Human-readable summary (counts and rates only: no file names, no patient data)."""
        s_lo, s_hi = self.sensitivity_ci
        p_lo, p_hi = self.specificity_ci
        status = (
            f"stored as gold.site_thresholds version {self.version}"
            if self.stored
            else (
                f"unchanged: version {self.version} already holds this calibration"
                if self.version
                else "not stored (dry run)"
            )
        )
        lines = []
        if self.development_films:
            lines.append(
                f"WARNING: {self.development_films} of {self.n_pneumonia + self.n_normal} films "
                "are from the model's development set (its training and validation films): these "
                "figures measure how the model fits its own training films, not how it performs "
                "at this site"
            )
        lines += [
            f"site {self.site_id}, model {self.model_name} {self.model_version}, "
            f"labels from {self.label_source}",
            f"films: {self.n_pneumonia} PNEUMONIA, {self.n_normal} NORMAL"
            + (f" ({self.unscored} could not be scored, left out)" if self.unscored else ""),
            f"threshold {self.threshold:.6f} for sensitivity >= {self.target_sensitivity:.2f} "
            f"(shipped threshold {self.shipped_threshold:.6f})",
            f"sensitivity {self.sensitivity:.3f} (95% CI {s_lo:.3f}-{s_hi:.3f})",
            f"specificity {self.specificity:.3f} (95% CI {p_lo:.3f}-{p_hi:.3f})",
            f"for +-{self.half_width:.3f} intervals: {self.pneumonia_films_needed} PNEUMONIA and "
            f"{self.normal_films_needed} NORMAL films (have {self.n_pneumonia} and "
            f"{self.n_normal})",
        ]
        if s_lo < self.target_sensitivity:
            lines.append(
                f"note: the lower 95% bound of sensitivity ({s_lo:.3f}) is below the target; "
                "more PNEUMONIA films would tell whether the target truly holds"
            )
        lines.append(status)
        return "\n".join(lines)

    def to_json(self) -> dict:
        """JSON-ready dict of every field."""
        return asdict(self)


def calibrate_scores(
    site_id: str,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    target_sensitivity: float,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    half_width: float = DEFAULT_HALF_WIDTH,
    model_name: str = "",
    model_version: str = "",
    shipped_threshold: float = float("nan"),
    label_source: str = "folder",
    unscored: int = 0,
    calibration_id: str = "",
) -> CalibrationResult:
    """The operating point for ``target_sensitivity`` on labelled scores, or `CalibrationError`."""
    if not 0.5 <= target_sensitivity < 1.0:
        raise CalibrationError(f"target sensitivity must be in [0.5, 1), got {target_sensitivity}")
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        present = LABEL_NAMES[1] if n_pos else LABEL_NAMES[0]
        raise CalibrationError(
            f"site {site_id}: only {present} films ({len(y)}); a threshold needs labelled films "
            "of both classes"
        )
    # Resolving a miss rate of 1 - target needs at least 1 / (1 - target) pneumonia films.
    need_pos = max(min_per_class, math.ceil(1.0 / (1.0 - target_sensitivity) - 1e-9))
    if n_pos < need_pos or n_neg < min_per_class:
        raise CalibrationError(
            f"site {site_id}: {n_pos} PNEUMONIA and {n_neg} NORMAL labelled films; at least "
            f"{need_pos} PNEUMONIA and {min_per_class} NORMAL films are needed for a target "
            f"sensitivity of {target_sensitivity:.2f}"
        )
    threshold = threshold_for_sensitivity(y, s, target_sensitivity)
    pred = s >= threshold
    tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    sensitivity, specificity = tp / n_pos, tn / n_neg
    return CalibrationResult(
        site_id=site_id,
        model_name=model_name,
        model_version=model_version,
        threshold=threshold,
        shipped_threshold=shipped_threshold,
        target_sensitivity=target_sensitivity,
        sensitivity=sensitivity,
        sensitivity_ci=wilson_interval(tp, n_pos),
        specificity=specificity,
        specificity_ci=wilson_interval(tn, n_neg),
        n_pneumonia=n_pos,
        n_normal=n_neg,
        unscored=unscored,
        label_source=label_source,
        half_width=half_width,
        pneumonia_films_needed=films_for_half_width(sensitivity, half_width),
        normal_films_needed=films_for_half_width(specificity, half_width),
        calibration_id=calibration_id,
    )


# ---------------------------------------------------------------------------------------------
# The site's films in the lakehouse


def validate_site_id(site_id: str) -> str:
    """A site id: 1-64 ASCII letters, digits, ``_``, ``-`` and ``.``, starting and ending with a
    letter or digit, no ``..``. ASCII only, so no two ids look alike (Cyrillic ``а`` vs ``a``)
    and an id is safe in a path or a SQL literal."""
    if not isinstance(site_id, str) or not _SITE_ID.fullmatch(site_id) or ".." in site_id:
        raise CalibrationError(
            f"invalid site id {site_id!r}: use 1-64 ASCII letters, digits, '_', '-' or '.', "
            "starting and ending with a letter or digit, without '..'"
        )
    return site_id


_SITE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")


def _latest_bronze(lake, columns: list[str], splits: list[str] | None) -> pa.Table:

    wanted = sorted({*columns, "image_id", "ingested_at"})
    bronze = lake.read(schemas.BRONZE, columns=wanted)
    if splits:
        bronze = bronze.filter(pc.is_in(bronze["dataset_split"], pa.array(splits)))
    if bronze.num_rows == 0:
        return bronze
    # latest version of each image_id
    order = bronze.sort_by([("image_id", "ascending"), ("ingested_at", "descending")])
    ids = order["image_id"].to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    return order.take(pa.array(keep, pa.int64()))


def _verdict_labels(lake) -> dict[str, int]:
    """image_id -> current radiologist label (rows of silver.label_history not from the folder)."""
    from deltalake import DeltaTable

    path = os.path.join(lake.catalog, "silver", "label_history")
    if not DeltaTable.is_deltatable(path):
        return {}
    history = DeltaTable(path).to_pyarrow_table(
        columns=["image_id", "label", "source", "is_current"]
    )
    current = history.filter(
        pc.and_(pc.equal(history["is_current"], True), pc.not_equal(history["source"], "folder"))
    )
    return {
        i: int(label)
        for i, label in zip(
            current["image_id"].to_pylist(), current["label"].to_pylist(), strict=True
        )
        if label is not None
    }


def site_films(
    lake,
    *,
    splits: list[str] | None = None,
    label_source: str = "folder",
    site_id: str = "",
) -> pa.Table:
    """The site's labelled films: ``image_id``, ``content_sha256``, ``label``, ``content``.

    Raises `CalibrationError` on contradicting labels (same bytes with both labels; with
    ``label_source="verdicts"``, a radiologist label that contradicts the folder).
    """
    if label_source not in ("folder", "verdicts"):
        raise CalibrationError(f"labels must be 'folder' or 'verdicts', got {label_source!r}")
    films = _latest_bronze(lake, ["category", "content_sha256", "content", "dataset_split"], splits)
    folder = [
        LABEL_NAMES.index(c) if c in LABEL_NAMES else None for c in films["category"].to_pylist()
    ]
    films = films.append_column("folder_label", pa.array(folder, pa.int32()))
    films = films.filter(pc.is_valid(films["folder_label"]))
    if label_source == "verdicts":
        verdicts = _verdict_labels(lake)
        ids = films["image_id"].to_pylist()
        folder_labels = films["folder_label"].to_pylist()
        contradicting = [
            i for i, f in zip(ids, folder_labels, strict=True) if i in verdicts and verdicts[i] != f
        ]
        if contradicting:
            raise CalibrationError(
                f"site {site_id}: {len(contradicting)} films have a radiologist label that "
                f"contradicts their folder (e.g. image_id {contradicting[0]}); move them to the "
                "right folder and re-ingest, or calibrate with --labels folder"
            )
        keep = pa.array([i in verdicts for i in ids])
        films = films.filter(keep)
        labels = pa.array([verdicts[i] for i in films["image_id"].to_pylist()], pa.int32())
    else:
        labels = films["folder_label"]
    films = films.append_column("label", labels)
    by_content: dict[str, set[int]] = {}
    for sha, label in zip(
        films["content_sha256"].to_pylist(), films["label"].to_pylist(), strict=True
    ):
        by_content.setdefault(sha, set()).add(label)
    both = [sha for sha, labels_of in by_content.items() if len(labels_of) > 1]
    if both:
        raise CalibrationError(
            f"site {site_id}: {len(both)} images are filed under both NORMAL and PNEUMONIA "
            f"(identical bytes, e.g. sha256 {both[0][:16]}...); fix the folders before calibrating"
        )
    return films.select(["image_id", "content_sha256", "label", "content", "category", "filename"])


def _calibration_id(model_name: str, model_version: str, target: float, films: pa.Table) -> str:
    digest = hashlib.sha256(f"{model_name}\0{model_version}\0{target:.6f}".encode())
    rows = sorted(
        zip(
            films["image_id"].to_pylist(),
            films["content_sha256"].to_pylist(),
            films["label"].to_pylist(),
            strict=True,
        )
    )
    for image_id, sha, label in rows:
        digest.update(f"\0{image_id}\0{sha}\0{label}".encode())
    return digest.hexdigest()


def versions_of(rows: pa.Table, site_id: str, model_name: str, model_version: str) -> pa.Table:
    """The rows of ``gold.site_thresholds`` (any engine's read of it) for one site and model
    version, oldest first."""
    mask = pc.and_(
        pc.and_(pc.equal(rows["site_id"], site_id), pc.equal(rows["model_name"], model_name)),
        pc.equal(rows["model_version"], model_version),
    )
    return rows.filter(mask).sort_by("version")


def latest_site_threshold(
    rows: pa.Table, site_id: str, model_name: str, model_version: str
) -> SiteThreshold | None:
    """The threshold in force: the highest version for (site, model name, model version).

    The one rule both engines apply (locally on the Delta table, on Databricks on
    ``spark.table(...)``); None when the site has no calibration for that model version.
    """
    versions = versions_of(rows, validate_site_id(site_id), model_name, model_version)
    if versions.num_rows == 0:
        return None
    row = versions.slice(versions.num_rows - 1).to_pylist()[0]
    threshold = row["threshold"]
    # Rows may be copied in by hand (docs/databricks.md): a threshold of NaN, inf, 0, 1 or
    # beyond would label every film the same with exit 0, so it is refused where it is read.
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
        raise CalibrationError(
            f"gold.site_thresholds row site_id={row['site_id']!r}, model {model_name} "
            f"{model_version}, version {row['version']}: threshold {threshold!r} is not a "
            "probability strictly between 0 and 1; append a corrected version "
            "(`cxrlake calibrate`) or remove the row"
        )
    return SiteThreshold(
        site_id=row["site_id"],
        version=int(row["version"]),
        threshold=float(threshold),
        model_name=row["model_name"],
        model_version=row["model_version"],
    )


def stored_versions(lake, site_id: str, model_name: str, model_version: str) -> pa.Table:
    """Every stored version of a site's threshold for one model, oldest first."""
    from deltalake import DeltaTable

    spec = site_thresholds_spec()
    if not DeltaTable.is_deltatable(lake.path(spec)):
        return SITE_THRESHOLDS_SCHEMA.empty_table()
    rows = DeltaTable(lake.path(spec)).to_pyarrow_table()
    return versions_of(rows, site_id, model_name, model_version)


def site_threshold(
    lakehouse: str | os.PathLike, site_id: str, model: Any = None, env: str = "dev"
) -> SiteThreshold | None:
    """The latest stored threshold of ``site_id`` for ``model`` (its name and version), or None.

    None means no calibration exists for that model version: use the shipped threshold.
    """
    import cxrlake
    from cxrlake.lakehouse.storage import Lakehouse

    model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)
    lake = Lakehouse(lakehouse, env)
    versions = stored_versions(lake, validate_site_id(site_id), model.name, model.version)
    return latest_site_threshold(versions, site_id, model.name, model.version)


def spark_site_threshold(spark: Any, table: str, site_id: str, model: Any = None):
    """`latest_site_threshold` over the Unity Catalog table ``table``
    (``<catalog>.<gold schema>.site_thresholds``) for the Databricks jobs; None when absent."""
    import cxrlake

    model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)
    if not spark.catalog.tableExists(table):
        return None
    frame = spark.table(table).where(
        (spark_col("site_id") == validate_site_id(site_id))
        & (spark_col("model_name") == model.name)
        & (spark_col("model_version") == model.version)
    )
    rows = pa.Table.from_pylist(
        [r.asDict() for r in frame.collect()], schema=SITE_THRESHOLDS_SCHEMA
    )
    return latest_site_threshold(rows, site_id, model.name, model.version)


def spark_col(name: str) -> Any:
    """``pyspark.sql.functions.col`` (pyspark imported only on Databricks paths)."""
    from pyspark.sql import functions as F

    return F.col(name)


def _ensure_table(lake) -> None:
    from deltalake import DeltaTable

    from cxrlake.lakehouse.storage import commit_properties

    spec = site_thresholds_spec()
    if not DeltaTable.is_deltatable(lake.path(spec)):
        os.makedirs(lake.path(spec), exist_ok=True)
        DeltaTable.create(
            lake.path(spec),
            SITE_THRESHOLDS_SCHEMA,
            mode="ignore",
            name=spec.name,
            description=f"cxrlake {spec.qualified_name}",
            configuration=schemas.TABLE_PROPERTIES,
            commit_properties=commit_properties(operation="create"),
        )


def calibrate_site(
    lakehouse: str | os.PathLike,
    site_id: str,
    *,
    env: str = "dev",
    model: Any = None,
    target_sensitivity: float = 0.95,
    splits: list[str] | None = None,
    label_source: str = "folder",
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    half_width: float = DEFAULT_HALF_WIDTH,
    threads: int | None = None,
    dry_run: bool = False,
    include_development_films: bool = False,
) -> CalibrationResult:
    """Calibrate ``site_id`` on its labelled films in the lakehouse and store a new version.

    ``splits`` restricts the films to those ``dataset_split`` values (default: every labelled
    film in bronze). Raises `CalibrationError` when the films cannot support a threshold, or
    when any is from the model's development set unless ``include_development_films`` (the
    result then counts them in ``development_films`` and its report warns that the figures
    measure fit, not the site).
    """
    import cxrlake
    from cxrlake.lakehouse.storage import Lakehouse, LakehouseLock

    validate_site_id(site_id)
    model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)
    lake = Lakehouse(lakehouse, env)
    films = site_films(lake, splits=splits, label_source=label_source, site_id=site_id)
    if films.num_rows == 0:
        where = f" in splits {', '.join(splits)}" if splits else ""
        raise CalibrationError(
            f"site {site_id}: no labelled films in bronze{where} (labels from {label_source}); "
            "ingest the site's films with `cxrlake pipeline run` first"
        )
    development = _development_films(films, model, site_id, include_development_films)
    scored = cxrlake.predict(films["content"].combine_chunks(), model=model, threads=threads)
    ok = pc.is_null(scored["error"])
    unscored = scored.num_rows - pc.sum(ok.cast(pa.int64())).as_py()
    films = films.filter(ok)
    development = int(np.asarray(development)[np.asarray(ok.to_pylist(), bool)].sum())
    scores = np.asarray(scored.filter(ok)["probability"].to_numpy(zero_copy_only=False))
    calibration_id = _calibration_id(model.name, model.version, target_sensitivity, films)
    result = calibrate_scores(
        site_id,
        np.asarray(films["label"].to_numpy(zero_copy_only=False)),
        scores,
        target_sensitivity=target_sensitivity,
        min_per_class=min_per_class,
        half_width=half_width,
        model_name=model.name,
        model_version=model.version,
        shipped_threshold=model.threshold,
        label_source=label_source,
        unscored=int(unscored),
        calibration_id=calibration_id,
    )
    result = _with(result, development_films=development)
    if dry_run:
        return result
    with LakehouseLock(lakehouse, env):
        _ensure_table(lake)
        versions = stored_versions(lake, site_id, model.name, model.version)
        if versions.num_rows:
            last = versions.slice(versions.num_rows - 1).to_pylist()[0]
            if last["calibration_id"] == calibration_id:
                return _with(result, version=int(last["version"]), stored=False)
        version = int(versions.num_rows and max(versions["version"].to_pylist())) + 1
        row = {
            "site_id": site_id,
            "version": version,
            "model_name": model.name,
            "model_version": model.version,
            "threshold": result.threshold,
            "target_sensitivity": target_sensitivity,
            "sensitivity": result.sensitivity,
            "sensitivity_ci_low": result.sensitivity_ci[0],
            "sensitivity_ci_high": result.sensitivity_ci[1],
            "specificity": result.specificity,
            "specificity_ci_low": result.specificity_ci[0],
            "specificity_ci_high": result.specificity_ci[1],
            "n_pneumonia": result.n_pneumonia,
            "n_normal": result.n_normal,
            "label_source": label_source,
            "selection": json.dumps(
                {"splits": splits or None, "labels": label_source}
                | ({"development_films": development} if development else {})
            ),
            "calibration_id": calibration_id,
            "calibrated_at": dt.datetime.now(dt.timezone.utc),
        }
        lake.append(
            site_thresholds_spec(),
            pa.Table.from_pylist([row], schema=SITE_THRESHOLDS_SCHEMA),
            operation="calibrate",
        )
    return _with(result, version=version, stored=True)


def _development_films(films: pa.Table, model: Any, site_id: str, include: bool) -> list[bool]:
    """Per film, whether it is from ``model``'s development set; `CalibrationError` when any is
    and ``include`` is False."""
    from cxrlake.training.provenance import seen_in_development

    seen = seen_in_development(
        films["category"].to_pylist(),
        films["filename"].to_pylist(),
        films["content_sha256"].to_pylist(),
        model.path,
    )
    n = sum(seen)
    if n and not include:
        raise CalibrationError(
            f"site {site_id}: {n} of {len(seen)} films are from the model's development set "
            "(the films it was trained and validated on, matched by bytes or patient): a "
            "threshold and figures on them measure how the model fits its training films, not "
            "how it performs at this site. Calibrate on the site's own films (--split selects "
            "them), or pass --include-development-films to see the figures under that warning"
        )
    return seen


def _with(result: CalibrationResult, **changes: Any) -> CalibrationResult:
    from dataclasses import replace

    return replace(result, **changes)


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: Any) -> None:
    """Add ``calibrate`` to the main parser's subparsers."""
    from cxrlake.cli_support import positive_int

    p = subparsers.add_parser(
        "calibrate",
        help="pick a site's operating point from its own labelled films (stored per site)",
        description="Score the site's labelled films in bronze, choose the highest threshold "
        "whose sensitivity reaches the target, report sensitivity and specificity with 95% "
        "Wilson intervals, and store a new version in gold.site_thresholds. Refuses on a single "
        "class, too few films, contradicting labels or films from the model's development set "
        "(exit code 1).",
    )
    p.add_argument("--lakehouse", required=True, help="root folder of the Delta tables")
    p.add_argument("--env", default="dev", help="environment (default: dev)")
    p.add_argument("--site", required=True, help="site id (letters, digits, _ - .)")
    p.add_argument(
        "--target-sensitivity", type=float, default=0.95, help="default 0.95 (in [0.5, 1))"
    )
    p.add_argument(
        "--split",
        action="append",
        default=None,
        metavar="NAME",
        help="only films of this dataset_split (repeatable; default: every labelled film)",
    )
    p.add_argument(
        "--labels",
        choices=("folder", "verdicts"),
        default="folder",
        help="folder labels from bronze (default) or the radiologists' current labels",
    )
    p.add_argument(
        "--min-per-class",
        type=positive_int,
        default=DEFAULT_MIN_PER_CLASS,
        help=f"refuse below this many films of a class (default {DEFAULT_MIN_PER_CLASS})",
    )
    p.add_argument(
        "--half-width",
        type=float,
        default=DEFAULT_HALF_WIDTH,
        help="interval half width for the 'films needed' estimate (default 0.025)",
    )
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped model)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--dry-run", action="store_true", help="report only, store nothing")
    p.add_argument(
        "--include-development-films",
        action="store_true",
        help="keep films from the model's development set (refused by default) and report "
        "the figures under a warning that they measure fit, not the site",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_calibrate_command)


def _calibrate_command(args: Any) -> int:
    import sys

    try:
        result = calibrate_site(
            args.lakehouse,
            args.site,
            env=args.env,
            model=args.model,
            target_sensitivity=args.target_sensitivity,
            splits=args.split,
            label_source=args.labels,
            min_per_class=args.min_per_class,
            half_width=args.half_width,
            threads=args.threads,
            dry_run=args.dry_run,
            include_development_films=args.include_development_films,
        )
    except CalibrationError as error:
        print(f"cxrlake calibrate: refused: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"cxrlake calibrate: {error}", file=sys.stderr)
        return 2
    if args.json and result.development_films:
        print(f"cxrlake calibrate: {result.report().splitlines()[0]}", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.report())
    return 0
