"""Model performance, drift and model-radiologist agreement over the catalog port.

An engine-neutral service (docs/architecture.md, "Layers"): it reads the tables through a
`cxrlake.catalog.Catalog`, runs the rules of `cxrlake.medallion.rules` with the catalog's
``query`` and the metrics of `cxrlake.medallion.metrics`, and returns the rows to write. The
caller writes them (the local pipeline with its run's commit metadata), so each stage stays one
commit per table. It imports no engine and no command line.

- `performance_rows`: the ``gold.model_performance`` rows of the current model's evaluation that
  are not recorded yet.
- `drift_rows`: the current model's ``gold.drift_metrics`` rows that are new or changed.
- `latest_performance`: the latest evaluation per labelled split of one model.
- `review_agreement`: the ``gold.review_agreement`` rows of the current verdicts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TypedDict

import pyarrow as pa

from cxrlake.catalog import Catalog, Relation, TableRef
from cxrlake.medallion import identity, metrics, rules, schemas
from cxrlake.medallion.transforms import feature_tag
from cxrlake.model import Model

PERFORMANCE_FIELDS = (
    "dataset_split",
    "total_samples",
    "accuracy",
    "precision",
    "recall",
    "f1_score",
    "auc_roc",
)
"""The ``gold.model_performance`` columns `latest_performance` keeps (plus the matrix)."""


class SplitPerformance(TypedDict):
    """The latest evaluation of one labelled split (`latest_performance`)."""

    dataset_split: str
    total_samples: int
    accuracy: float
    precision: float
    recall: float
    f1_score: float
    auc_roc: float | None
    confusion_matrix: dict[str, object]


def model_view(model: Model) -> pa.Table:
    """The one-row ``model`` view the rules join on (`rules.model_row`)."""
    return rules.model_row(model.name, model.version, feature_tag(model))


def state_views(
    views: tuple[str, ...], columns: Mapping[str, tuple[str, ...]] | None = None
) -> dict[str, Relation]:
    """The key columns (`rules.STATE_COLUMNS`, or ``columns``) of the tables behind ``views``,
    as `TableRef`s: the adapter reads them where the rule runs."""
    chosen = columns or {}
    return {
        view: TableRef(rules.VIEWS[view], tuple(chosen.get(view, rules.STATE_COLUMNS[view])))
        for view in views
    }


def performance_rows(
    catalog: Catalog,
    model: Model,
    threshold: float,
    evaluated_at: dt.datetime | None = None,
) -> pa.Table:
    """Metrics per labelled split of ``model`` over the predictions of the current bytes of the
    images in silver (`rules.EVALUATION_INPUT`), decided at ``threshold``; only the evaluations
    ``gold.model_performance`` does not hold yet (`rules.PERFORMANCE_INSERTS`)."""
    relations = state_views(("silver", "predictions"), {"predictions": rules.EVALUATION_COLUMNS})
    relations["model"] = model_view(model)
    evaluated = catalog.query(rules.EVALUATION_INPUT, relations)
    evaluations = metrics.model_performance(evaluated, threshold, evaluated_at)
    known = state_views(("performance",))
    known["evaluations"] = pa.Table.from_batches([evaluations])
    return catalog.query(rules.PERFORMANCE_INSERTS, known)


def drift_rows(catalog: Catalog, model: Model, computed_at: dt.datetime | None = None) -> pa.Table:
    """``model``'s ``gold.drift_metrics`` rows that are new or changed (`rules.DRIFT_METRICS`),
    stamped ``computed_at`` (default now); none when the table is up to date."""
    relations = {
        "predictions": TableRef(schemas.PREDICTIONS, rules.DRIFT_PREDICTION_COLUMNS),
        "silver": TableRef(schemas.SILVER, ("image_id", "content_sha256", "quality_score")),
        "drift": TableRef(schemas.DRIFT_METRICS),
        "drift_reference": rules.drift_reference_rows(
            model.name, model.version, model.drift_reference
        ),
        "model": model_view(model),
    }
    rows = catalog.query(rules.DRIFT_METRICS, relations)
    if not rows.num_rows:
        return schemas.GOLD_DRIFT_METRICS.empty_table()
    stamp = identity.to_utc(computed_at) or identity.utc_now()
    rows = rows.append_column("computed_at", pa.array([stamp] * rows.num_rows, schemas.TS))
    return rows.cast(schemas.GOLD_DRIFT_METRICS)


def latest_performance(
    catalog: Catalog, model_name: str, model_version: str
) -> list[SplitPerformance]:
    """The latest ``gold.model_performance`` row per split of one model (by ``evaluated_at``,
    then ``evaluation_id``), sorted by split, with its confusion matrix parsed."""
    rows = catalog.read(
        schemas.PERFORMANCE, filter={"model_name": model_name, "model_version": model_version}
    ).to_pylist()
    # later evaluations of a split replace earlier ones
    ordered = sorted(rows, key=lambda r: (r["evaluated_at"], r["evaluation_id"]))
    latest = {row["dataset_split"]: row for row in ordered}
    return [
        SplitPerformance(
            dataset_split=split,
            total_samples=row["total_samples"],
            accuracy=row["accuracy"],
            precision=row["precision"],
            recall=row["recall"],
            f1_score=row["f1_score"],
            auc_roc=row["auc_roc"],
            confusion_matrix=json.loads(row["confusion_matrix"]),
        )
        for split, row in sorted(latest.items())
    ]


def review_agreement(
    catalog: Catalog, evaluated_at: dt.datetime | None = None
) -> list[dict[str, object]]:
    """``gold.review_agreement`` rows of the current verdicts (`metrics.agreement_metrics`, the
    rule the review app and the Spark job run): over the current predictions (content hash =
    silver's), the feedback and the current labels of ``silver.label_history``. No rows without
    verdicts."""
    feedback = catalog.read(schemas.FEEDBACK).to_pylist()
    if not feedback:
        return []
    current_bytes = {
        (r["image_id"], r["content_sha256"])
        for r in catalog.read(schemas.SILVER, ["image_id", "content_sha256"]).to_pylist()
    }
    columns = ["prediction_id", "image_id", "content_sha256", "predicted_label"]
    predictions = [
        p
        for p in catalog.read(
            schemas.PREDICTIONS, [*columns, "model_name", "model_version"]
        ).to_pylist()
        if (p["image_id"], p["content_sha256"]) in current_bytes
    ]
    current = {
        r["image_id"]: r for r in catalog.read(schemas.LABEL_HISTORY).to_pylist() if r["is_current"]
    }
    return metrics.agreement_metrics(
        predictions, feedback, current, identity.to_utc(evaluated_at) or identity.utc_now()
    )


__all__ = [
    "SplitPerformance",
    "drift_rows",
    "latest_performance",
    "model_view",
    "performance_rows",
    "review_agreement",
    "state_views",
]
