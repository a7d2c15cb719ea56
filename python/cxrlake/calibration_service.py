"""Site calibration, the engine-neutral service: statistics (Wilson intervals, the films a
tighter interval needs), choosing a site's threshold for a target sensitivity, and the rules for
the rows of ``gold.site_thresholds`` (their id, the row a calibration stores, the version in
force and its validation where it is read).

No engine here: the table is read and written through the catalog port (`cxrlake.catalog`;
`stored_versions`, `store_calibration`), locally by `cxrlake.lakehouse.catalog.LocalCatalog`;
the Spark jobs read it with `cxrlake.spark.site_thresholds`. The local calibration flow is
`cxrlake.calibration`, the command `cxrlake.cli.calibrate`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.catalog import Catalog
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


def site_thresholds_spec() -> schemas.TableSpec:
    """The `TableSpec` of ``gold.site_thresholds`` (keys: site, model, version)."""
    return schemas.SITE_THRESHOLDS


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

    def to_json(self) -> dict[str, object]:
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


def calibration_id(model_name: str, model_version: str, target: float, films: pa.Table) -> str:
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


def site_threshold_row(
    result: CalibrationResult, version: int, splits: list[str] | None, at: dt.datetime
) -> dict[str, object]:
    """The ``gold.site_thresholds`` row that stores ``result`` as ``version``."""
    selection: dict[str, object] = {"splits": splits or None, "labels": result.label_source}
    if result.development_films:
        selection["development_films"] = result.development_films
    return {
        "site_id": result.site_id,
        "version": version,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "threshold": result.threshold,
        "target_sensitivity": result.target_sensitivity,
        "sensitivity": result.sensitivity,
        "sensitivity_ci_low": result.sensitivity_ci[0],
        "sensitivity_ci_high": result.sensitivity_ci[1],
        "specificity": result.specificity,
        "specificity_ci_low": result.specificity_ci[0],
        "specificity_ci_high": result.specificity_ci[1],
        "n_pneumonia": result.n_pneumonia,
        "n_normal": result.n_normal,
        "label_source": result.label_source,
        "selection": json.dumps(selection),
        "calibration_id": result.calibration_id,
        "calibrated_at": at,
    }


def next_version(versions: pa.Table, calibration_id: str) -> tuple[int, bool]:
    """(version, new) for a calibration given the stored ``versions`` of its site and model
    (oldest first): the last version and False when it already holds this calibration (an
    identical re-run writes nothing), else the next version number and True."""
    if versions.num_rows:
        last = versions.slice(versions.num_rows - 1).to_pylist()[0]
        if last["calibration_id"] == calibration_id:
            return int(last["version"]), False
    return int(versions.num_rows and max(versions["version"].to_pylist())) + 1, True


def stored_versions(
    catalog: Catalog, site_id: str, model_name: str, model_version: str
) -> pa.Table:
    """Every stored version of a site's threshold for one model, oldest first (none when the
    table does not exist yet)."""
    rows = catalog.read(site_thresholds_spec())
    return versions_of(rows, site_id, model_name, model_version)


def store_calibration(
    catalog: Catalog, result: CalibrationResult, splits: list[str] | None
) -> CalibrationResult:
    """Append ``result`` as the next version of its site's threshold, one commit (the caller
    serialises writers); an identical calibration already stored as the last version is not
    written again. Returns ``result`` with its version and whether it was stored now."""
    spec = site_thresholds_spec()
    catalog.ensure(spec)
    versions = stored_versions(catalog, result.site_id, result.model_name, result.model_version)
    version, new = next_version(versions, result.calibration_id)
    if not new:
        return replace(result, version=version, stored=False)
    row = site_threshold_row(result, version, splits, dt.datetime.now(dt.timezone.utc))
    catalog.append(
        spec, pa.Table.from_pylist([row], schema=SITE_THRESHOLDS_SCHEMA), operation="calibrate"
    )
    return replace(result, version=version, stored=True)


__all__ = [
    "DEFAULT_HALF_WIDTH",
    "DEFAULT_MIN_PER_CLASS",
    "SITE_THRESHOLDS_SCHEMA",
    "CalibrationError",
    "CalibrationResult",
    "calibrate_scores",
    "calibration_id",
    "films_for_half_width",
    "latest_site_threshold",
    "next_version",
    "site_threshold_row",
    "store_calibration",
    "stored_versions",
    "site_thresholds_spec",
    "threshold_for_sensitivity",
    "validate_site_id",
    "versions_of",
    "wilson_interval",
]
