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

This module is the local flow (films from bronze, scoring, storing), over the catalog port
(`cxrlake.catalog.Catalog`, here `cxrlake.lakehouse.catalog.LocalCatalog`). The statistics, the
rules of the stored rows and their reading and writing are the engine-neutral service
`cxrlake.calibration_service`; the Databricks jobs read the table with
`cxrlake.spark.site_thresholds`; the command is `cxrlake.cli.calibrate`.
`cxrlake.lakehouse.site_thresholds.site_threshold` reads the latest version back;
``cxrlake.predict(..., threshold=...)`` and the gold stage of the pipeline use it, and record
which threshold decided each label (``threshold``, ``threshold_source``).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrlake._api import predict
from cxrlake.calibration_service import (
    DEFAULT_HALF_WIDTH,
    DEFAULT_MIN_PER_CLASS,
    LABEL_NAMES,
    CalibrationError,
    CalibrationResult,
    calibrate_scores,
    calibration_id,
    store_calibration,
    validate_site_id,
)
from cxrlake.catalog import Catalog
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.lakehouse.storage import LakehouseLock
from cxrlake.medallion import schemas
from cxrlake.model import Model
from cxrlake.provenance import seen_in_development

# ---------------------------------------------------------------------------------------------
# The site's films in the lakehouse


def _latest_bronze(lake: Catalog, columns: list[str], splits: list[str] | None) -> pa.Table:
    """The latest version of each image in bronze (of ``splits``, when given)."""
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


def _verdict_labels(lake: Catalog) -> dict[str, int]:
    """image_id -> current radiologist label (rows of silver.label_history not from the folder)."""
    history = lake.read(schemas.LABEL_HISTORY, ["image_id", "label", "source", "is_current"])
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
    lake: Catalog,
    *,
    splits: list[str] | None = None,
    label_source: str = "folder",
    site_id: str = "",
) -> pa.Table:
    """The site's labelled films: ``image_id``, ``content_sha256``, ``label``, ``content``,
    ``category`` and ``filename``.

    Raises `CalibrationError` on contradicting labels (same bytes with both labels; with
    ``label_source="verdicts"``, a radiologist label that contradicts the folder).
    """
    if label_source not in ("folder", "verdicts"):
        raise CalibrationError(f"labels must be 'folder' or 'verdicts', got {label_source!r}")
    films = _latest_bronze(
        lake, ["category", "content_sha256", "content", "dataset_split", "filename"], splits
    )
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


def calibrate_site(
    lakehouse: str | os.PathLike[str],
    site_id: str,
    *,
    env: str = "dev",
    model: Model | str | os.PathLike[str] | None = None,
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
    validate_site_id(site_id)
    model = model if isinstance(model, Model) else Model(model)
    lake = LocalCatalog.at(lakehouse, env)
    films = site_films(lake, splits=splits, label_source=label_source, site_id=site_id)
    if films.num_rows == 0:
        where = f" in splits {', '.join(splits)}" if splits else ""
        raise CalibrationError(
            f"site {site_id}: no labelled films in bronze{where} (labels from {label_source}); "
            "ingest the site's films with `cxrlake pipeline run` first"
        )
    development = _development_films(films, model, site_id, include_development_films)
    result = _score_and_choose(
        films,
        np.asarray(development, bool),
        model,
        site_id,
        target_sensitivity=target_sensitivity,
        label_source=label_source,
        min_per_class=min_per_class,
        half_width=half_width,
        threads=threads,
    )
    if dry_run:
        return result
    with LakehouseLock(lakehouse, env):
        return store_calibration(lake, result, splits)


def _score_and_choose(
    films: pa.Table,
    development: np.ndarray,
    model: Model,
    site_id: str,
    *,
    target_sensitivity: float,
    label_source: str,
    min_per_class: int,
    half_width: float,
    threads: int | None,
) -> CalibrationResult:
    """Score ``films`` with ``model`` (the bytes held in bronze) and choose the threshold on the
    ones it could score (`calibrate_scores`)."""
    scored = predict(films["content"].combine_chunks(), model=model, threads=threads)
    ok = pc.is_null(scored["error"])
    unscored = scored.num_rows - pc.sum(ok.cast(pa.int64())).as_py()
    films = films.filter(ok)
    scores = np.asarray(scored.filter(ok)["probability"].to_numpy(zero_copy_only=False))
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
        calibration_id=calibration_id(model.name, model.version, target_sensitivity, films),
    )
    kept = np.asarray(ok.to_pylist(), bool)
    return replace(result, development_films=int(development[kept].sum()))


def _development_films(films: pa.Table, model: Model, site_id: str, include: bool) -> list[bool]:
    """Per film, whether it is from ``model``'s development set; `CalibrationError` when any is
    and ``include`` is False."""
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
