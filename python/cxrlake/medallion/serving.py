"""Serving tables and the champion/challenger comparison rule, engine-neutral.

- ``gold.pneumonia_serving_payload``: the inference table, one row per scoring request, with
  the columns of a Databricks inference table (AI Gateway: ``databricks_request_id``,
  ``client_request_id``, ``request_date``, ``request_time``, ``status_code``,
  ``execution_duration_ms``, ``sampling_fraction``, ``request``, ``response``,
  ``served_entity_id``; legacy: ``timestamp_ms``, ``request_metadata`` with the served model's
  name and version, here as the columns ``served_model_name`` / ``served_model_version``).
  ``cxrlake serve --lakehouse`` writes it (`cxrlake.serving.inference_log`) with each image's
  bytes replaced by ``"sha256:<hex>"``; on Databricks the AI Gateway writes
  ``<gold>.pneumonia_serving_payload`` with the request as sent (base64 bytes), and
  `inference_rows` digests those.
- ``gold.champion_challenger_comparison``: one row per served model version, MERGEd on
  (model_name, model_version) by `COMPARISON` over the rows of `inference_rows`.

Both engines run the same `COMPARISON` SQL (DuckDB locally, Spark SQL in the serving
comparison job) over three views: ``inference_rows`` (`INFERENCE_ROWS` schema),
``feedback`` (gold.prediction_feedback) and ``predictions`` (gold.pneumonia_predictions:
prediction_id, content_sha256).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Iterable

import pyarrow as pa

from cxrlake.columns import Row
from cxrlake.medallion.schemas import TS, TableSpec

PAYLOAD_TABLE = "pneumonia_serving_payload"
"""Name of the inference table in the gold schema (the AI Gateway names it
``<table_name_prefix>_payload``; the bundle's prefix is ``pneumonia_serving``)."""

GOLD_SERVING_PAYLOAD = pa.schema(
    [
        pa.field("databricks_request_id", pa.string(), nullable=False),
        pa.field("client_request_id", pa.string()),
        pa.field("request_date", pa.date32()),
        pa.field("request_time", TS),
        pa.field("timestamp_ms", pa.int64()),
        pa.field("status_code", pa.int32()),
        pa.field("execution_duration_ms", pa.int64()),
        pa.field("sampling_fraction", pa.float64()),
        pa.field("endpoint_name", pa.string()),
        pa.field("served_entity_id", pa.string()),  # champion / challenger locally
        pa.field("served_model_name", pa.string()),
        pa.field("served_model_version", pa.string()),
        pa.field("request", pa.string()),  # JSON, image bytes replaced by "sha256:<hex>"
        pa.field("response", pa.string()),  # JSON, {"predictions": [...]} or the error
    ]
)
"""``gold.pneumonia_serving_payload``: append-only, one row per request."""

INFERENCE_ROWS = pa.schema(
    [
        pa.field("databricks_request_id", pa.string()),
        pa.field("row_index", pa.int64()),
        pa.field("request_time", TS),
        pa.field("served_entity_id", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("predicted_label", pa.int32()),
        pa.field("error", pa.string()),
    ]
)
"""One row per scored image of a successful request (status 200): the view `COMPARISON`
reads."""

GOLD_COMPARISON = pa.schema(
    [
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("served_entity_id", pa.string()),  # of its latest request
        pa.field("requests", pa.int64()),
        pa.field("images", pa.int64()),
        pa.field("image_errors", pa.int64()),
        pa.field("positive_rate", pa.float64()),  # predicted PNEUMONIA / scored images
        pa.field("mean_probability", pa.float64()),
        pa.field("paired_images", pa.int64()),  # images another model version also scored
        pa.field("agreement_rate", pa.float64()),  # same label as the other version(s)
        pa.field("reviewed_images", pa.int64()),  # scored images with a radiologist label
        pa.field("true_positives", pa.int64()),
        pa.field("false_negatives", pa.int64()),
        pa.field("true_negatives", pa.int64()),
        pa.field("false_positives", pa.int64()),
        pa.field("sensitivity", pa.float64()),
        pa.field("specificity", pa.float64()),
        pa.field("first_request_time", TS),
        pa.field("last_request_time", TS),
        pa.field("computed_at", TS),
    ]
)
"""``gold.champion_challenger_comparison``: one row per model version seen by the endpoint."""

SERVING_PAYLOAD = TableSpec("gold", PAYLOAD_TABLE, GOLD_SERVING_PAYLOAD, ("databricks_request_id",))
COMPARISON_TABLE = TableSpec(
    "gold", "champion_challenger_comparison", GOLD_COMPARISON, ("model_name", "model_version")
)
MODEL_ALIASES_SCHEMA = pa.schema(
    [
        pa.field("alias", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),  # 1, 2, ... per alias
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("model_path", pa.string(), nullable=False),  # inside the lakehouse
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("previous_model_version", pa.string()),
        pa.field("set_at", TS, nullable=False),
    ]
)
"""``models.model_aliases``: the local registry of `cxrlake.serving.registry.LocalRegistry`,
append-only, one row per alias move; the latest row of an alias is in force."""
MODEL_ALIASES = TableSpec("models", "model_aliases", MODEL_ALIASES_SCHEMA, ("alias", "version"))

SERVING_TABLES: tuple[TableSpec, ...] = (SERVING_PAYLOAD, COMPARISON_TABLE, MODEL_ALIASES)
"""Tables of serving: written by `cxrlake serve` / `cxrlake promote`, not by the pipeline."""

COMPARISON = """
WITH scored AS (
  SELECT r.*, row_number() OVER (
    PARTITION BY r.model_name, r.model_version, r.image_sha256
    ORDER BY r.request_time DESC, r.databricks_request_id DESC, r.row_index DESC) AS rn
  FROM inference_rows r
  WHERE r.error IS NULL AND r.image_sha256 IS NOT NULL
),
latest AS (SELECT * FROM scored WHERE rn = 1),
verdicts AS (
  SELECT p.content_sha256, f.correct_label, row_number() OVER (
    PARTITION BY p.content_sha256 ORDER BY f.feedback_timestamp DESC, f.feedback_id DESC) AS rn
  FROM feedback f JOIN predictions p ON p.prediction_id = f.prediction_id
  WHERE f.correct_label IN ('NORMAL', 'PNEUMONIA')
),
truth AS (
  SELECT content_sha256, CASE WHEN correct_label = 'PNEUMONIA' THEN 1 ELSE 0 END AS true_label
  FROM verdicts WHERE rn = 1
),
pairs AS (
  SELECT a.model_name, a.model_version, count(*) AS paired_images,
    sum(CASE WHEN a.predicted_label = b.predicted_label THEN 1 ELSE 0 END) AS agreeing
  FROM latest a JOIN latest b ON a.image_sha256 = b.image_sha256
    AND NOT (a.model_name = b.model_name AND a.model_version = b.model_version)
  GROUP BY a.model_name, a.model_version
),
reviewed AS (
  SELECT l.model_name, l.model_version, count(*) AS reviewed_images,
    sum(CASE WHEN l.predicted_label = 1 AND t.true_label = 1 THEN 1 ELSE 0 END) AS tp,
    sum(CASE WHEN l.predicted_label = 0 AND t.true_label = 1 THEN 1 ELSE 0 END) AS fn,
    sum(CASE WHEN l.predicted_label = 0 AND t.true_label = 0 THEN 1 ELSE 0 END) AS tn,
    sum(CASE WHEN l.predicted_label = 1 AND t.true_label = 0 THEN 1 ELSE 0 END) AS fp
  FROM latest l JOIN truth t ON t.content_sha256 = l.image_sha256
  GROUP BY l.model_name, l.model_version
),
roles AS (
  SELECT model_name, model_version, served_entity_id FROM (
    SELECT r.model_name, r.model_version, r.served_entity_id, row_number() OVER (
      PARTITION BY r.model_name, r.model_version
      ORDER BY r.request_time DESC, r.databricks_request_id DESC) AS rn
    FROM inference_rows r) x
  WHERE rn = 1
),
volume AS (
  SELECT r.model_name, r.model_version,
    count(DISTINCT r.databricks_request_id) AS requests,
    count(*) AS images,
    sum(CASE WHEN r.error IS NULL THEN 0 ELSE 1 END) AS image_errors,
    min(r.request_time) AS first_request_time,
    max(r.request_time) AS last_request_time
  FROM inference_rows r
  GROUP BY r.model_name, r.model_version
),
rates AS (
  SELECT model_name, model_version, avg(CAST(predicted_label AS DOUBLE)) AS positive_rate,
    avg(probability) AS mean_probability
  FROM latest GROUP BY model_name, model_version
)
SELECT v.model_name, v.model_version, o.served_entity_id, v.requests, v.images,
  v.image_errors, x.positive_rate, x.mean_probability,
  coalesce(p.paired_images, 0) AS paired_images,
  CASE WHEN p.paired_images > 0 THEN CAST(p.agreeing AS DOUBLE) / p.paired_images END
    AS agreement_rate,
  coalesce(w.reviewed_images, 0) AS reviewed_images,
  coalesce(w.tp, 0) AS true_positives, coalesce(w.fn, 0) AS false_negatives,
  coalesce(w.tn, 0) AS true_negatives, coalesce(w.fp, 0) AS false_positives,
  CASE WHEN w.tp + w.fn > 0 THEN CAST(w.tp AS DOUBLE) / (w.tp + w.fn) END AS sensitivity,
  CASE WHEN w.tn + w.fp > 0 THEN CAST(w.tn AS DOUBLE) / (w.tn + w.fp) END AS specificity,
  v.first_request_time, v.last_request_time
FROM volume v
JOIN roles o ON o.model_name = v.model_name AND o.model_version = v.model_version
LEFT JOIN rates x ON x.model_name = v.model_name AND x.model_version = v.model_version
LEFT JOIN pairs p ON p.model_name = v.model_name AND p.model_version = v.model_version
LEFT JOIN reviewed w ON w.model_name = v.model_name AND w.model_version = v.model_version
ORDER BY v.model_name, v.model_version
"""
"""The comparison, one row per model version that answered (``computed_at`` is added by the
caller). Per model version over its latest answer for each distinct image (by sha256):
positive rate and mean probability; agreement = share of the images another model version
also scored where both gave the same label (with a champion and one challenger: the agreement
between them, the same on both rows); sensitivity and specificity against the radiologist
label of those bytes: the latest decisive verdict (agree / disagree, any reviewer) on a
gold prediction of the same ``content_sha256``. Requests, images and errors count every scored
row of successful requests."""

COMPARISON_FEEDBACK_COLUMNS = (
    "feedback_id",
    "prediction_id",
    "correct_label",
    "feedback_timestamp",
)
COMPARISON_PREDICTION_COLUMNS = ("prediction_id", "content_sha256")


def _image_digest(value: object) -> str | None:
    """sha256 of a logged ``content`` value: ``"sha256:<hex>"`` as the local server logs it, or
    the base64 bytes as the Databricks inference table keeps them."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if not isinstance(value, str):
        return None
    if value.startswith("sha256:"):
        return value[len("sha256:") :]
    text = "".join(value.split())
    try:
        if "-" in text or "_" in text:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        else:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return hashlib.sha256(data).hexdigest()


def _request_contents(request: object) -> list[object]:
    """The ``content`` values of a logged request, in row order ([] when unreadable)."""
    if not isinstance(request, dict):
        return []
    if "dataframe_split" in request:
        split = request["dataframe_split"]
        columns = split.get("columns") or ["content"]
        if "content" not in columns:
            return []
        i = columns.index("content")
        return [
            row[i] if isinstance(row, list) and len(row) > i else None
            for row in split.get("data") or []
        ]
    for key in ("dataframe_records", "inputs", "instances"):
        if key not in request:
            continue
        payload = request[key]
        if isinstance(payload, dict):
            values = payload.get("content")
            return values if isinstance(values, list) else [values]
        if isinstance(payload, list):
            return [r.get("content") if isinstance(r, dict) else r for r in payload]
    return []


def inference_rows(payload: pa.RecordBatch | pa.Table) -> pa.Table:
    """`INFERENCE_ROWS` of inference-table rows: for each request answered 200, one row per
    prediction, with the sha256 of its image and the model name and version the answer gives
    (so a row names the model version that scored it, on either engine). Requests whose
    request or response is not readable JSON are left out."""
    table = payload if isinstance(payload, pa.Table) else pa.Table.from_batches([payload])
    out: dict[str, list[object]] = {name: [] for name in INFERENCE_ROWS.names}
    columns = {
        name: table.column(name).to_pylist()
        for name in (
            "databricks_request_id",
            "request_time",
            "status_code",
            "served_entity_id",
            "request",
            "response",
        )
    }
    for i, status in enumerate(columns["status_code"]):
        if status != 200:
            continue
        try:
            request = json.loads(columns["request"][i] or "null")
            response = json.loads(columns["response"][i] or "null")
        except (TypeError, ValueError):
            continue
        predictions = response.get("predictions") if isinstance(response, dict) else None
        if not isinstance(predictions, list):
            continue
        contents = _request_contents(request)
        for j, prediction in enumerate(predictions):
            if not isinstance(prediction, dict):
                continue
            out["databricks_request_id"].append(columns["databricks_request_id"][i])
            out["row_index"].append(j)
            out["request_time"].append(columns["request_time"][i])
            out["served_entity_id"].append(columns["served_entity_id"][i])
            out["model_name"].append(prediction.get("model_name"))
            out["model_version"].append(prediction.get("model_version"))
            out["image_sha256"].append(_image_digest(contents[j]) if j < len(contents) else None)
            out["probability"].append(prediction.get("probability"))
            out["predicted_label"].append(prediction.get("predicted_label"))
            out["error"].append(prediction.get("error"))
    return pa.table(out, schema=INFERENCE_ROWS)


def comparison_rows(rows: Iterable[Row], computed_at: dt.datetime) -> pa.Table:
    """The `COMPARISON` result as `GOLD_COMPARISON` rows, stamped ``computed_at``."""
    records = [{**row, "computed_at": computed_at} for row in rows]
    return pa.Table.from_pylist(records, schema=GOLD_COMPARISON)


def format_comparison(table: pa.Table) -> str:
    """The comparison as a small text table for the terminal."""
    if table.num_rows == 0:
        return "no scored requests in the inference table yet"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    header = (
        "model",
        "served as",
        "requests",
        "images",
        "errors",
        "positive",
        "paired",
        "agreement",
        "reviewed",
        "sensitivity",
        "specificity",
    )
    lines = [header]
    for r in table.to_pylist():
        lines.append(
            (
                f"{r['model_name']} v{r['model_version']}",
                r["served_entity_id"] or "-",
                str(r["requests"]),
                str(r["images"]),
                str(r["image_errors"]),
                pct(r["positive_rate"]),
                str(r["paired_images"]),
                pct(r["agreement_rate"]),
                str(r["reviewed_images"]),
                pct(r["sensitivity"]),
                pct(r["specificity"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
