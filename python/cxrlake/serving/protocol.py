"""The scoring protocol of MLflow and Databricks Model Serving, for image bytes.

A request is a JSON object with exactly one of ``dataframe_split`` (``{"columns": [...],
"data": [[...], ...]}``), ``dataframe_records`` (``[{"content": ...}, ...]``), ``inputs`` or
``instances`` (``{"content": [...]}``, a list of records, or a list of values), where
``content`` holds each image's bytes as base64 (standard or URL-safe alphabet, padding
optional). Optional ``client_request_id`` (a string of at most 128 characters, as on Databricks).
The answer is ``{"predictions": [row, ...]}``, one object per input row with every column of
`cxrlake.predict` (probability, predicted_label, label_name, model_name, model_version, error,
and any column a later version adds).

Problems with the whole request (not JSON, no ``content`` column ...) raise `ProtocolError`
(HTTP 400). A row whose value is not a base64 string gets that error in its own row; the core
gives the errors of rows that are not images; the other rows are scored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from cxrlake.columns import Row
from cxrlake.exceptions import CxrlakeError
from cxrlake.png import grayscale_png

INPUT_COLUMN = "content"
"""Name of the input column: base64 image bytes."""

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body accepted (16 MiB, the Databricks Model Serving payload limit)."""

MAX_CLIENT_REQUEST_ID = 128
PAYLOAD_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")


class ProtocolError(CxrlakeError, ValueError):
    """A request that cannot be scored at all; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ParsedRequest:
    """A request body split into image rows.

    ``images[i]`` is the bytes of row i, or None when ``row_errors[i]`` says why it cannot be
    decoded; ``digests[i]`` is the sha256 (hex) of the bytes, or of the raw value for a bad row,
    so the inference log can name every row without keeping its content.
    """

    payload_key: str
    images: list[bytes | None]
    row_errors: list[str | None]
    digests: list[str | None]
    client_request_id: str | None
    document: dict[str, object]


def _decode_value(value: object) -> tuple[bytes | None, str | None]:
    if isinstance(value, dict) and set(value) == {"b64"}:  # MLflow's tensor form for bytes
        value = value["b64"]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return None, f"content is not a base64 string (got {kind})"
    text = value.strip()
    if "\n" in text or "\r" in text:  # MIME-style base64 wrapped at 76 characters
        text = "".join(text.split())
    if not text:
        return None, "empty image data"
    try:
        if "-" in text or "_" in text:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        else:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None, "content is not valid base64"
    return data, None


def _column_values(key: str, payload: object) -> list[object]:
    """The ``content`` values of ``payload`` (the value of ``key``), in row order."""
    if key == "dataframe_split":
        if not isinstance(payload, dict) or "data" not in payload:
            raise ProtocolError('dataframe_split must be an object with "columns" and "data"')
        columns = payload.get("columns")
        data = payload["data"]
        if not isinstance(data, list):
            raise ProtocolError("dataframe_split.data must be a list of rows")
        if columns is None:
            columns = [INPUT_COLUMN]
        if not isinstance(columns, list) or INPUT_COLUMN not in columns:
            raise ProtocolError(
                f'dataframe_split has no "{INPUT_COLUMN}" column (columns: {columns!r})'
            )
        index = columns.index(INPUT_COLUMN)
        values: list[object] = []
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != len(columns):
                raise ProtocolError(
                    f"dataframe_split.data row {i} does not have {len(columns)} values"
                )
            values.append(row[index])
        return values
    if key == "dataframe_records":
        if not isinstance(payload, list):
            raise ProtocolError("dataframe_records must be a list of objects")
        return [_record_value(i, record, key) for i, record in enumerate(payload)]
    # inputs / instances: {"content": [...]}, [{"content": ...}, ...] or [value, ...]
    if isinstance(payload, dict):
        if INPUT_COLUMN not in payload:
            raise ProtocolError(
                f'{key} has no "{INPUT_COLUMN}" field (fields: {sorted(payload)!r})'
            )
        content = payload[INPUT_COLUMN]
        return content if isinstance(content, list) else [content]
    if isinstance(payload, list):
        if payload and all(isinstance(item, dict) for item in payload):
            return [_record_value(i, record, key) for i, record in enumerate(payload)]
        return list(payload)
    raise ProtocolError(f"{key} must be an object or a list")


def _record_value(i: int, record: object, key: str) -> object:
    if not isinstance(record, dict):
        raise ProtocolError(f"{key}[{i}] is not an object")
    if INPUT_COLUMN not in record:
        raise ProtocolError(f'{key}[{i}] has no "{INPUT_COLUMN}" field')
    return record[INPUT_COLUMN]


def _refuse_constant(name: str) -> NoReturn:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def parse_request(body: bytes) -> ParsedRequest:
    """Split a request body into image rows; raises `ProtocolError` for a bad request."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ProtocolError("request body is not UTF-8 JSON") from None
    except RecursionError:
        raise ProtocolError("request body is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(
            f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(document, dict):
        raise ProtocolError(f"request body must be a JSON object with one of {PAYLOAD_KEYS}")
    keys = [k for k in PAYLOAD_KEYS if k in document]
    if len(keys) != 1:
        found = f"found {keys}" if keys else "found none"
        raise ProtocolError(f"request must have exactly one of {', '.join(PAYLOAD_KEYS)} ({found})")
    client_id = document.get("client_request_id")
    if client_id is not None and (
        not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_REQUEST_ID
    ):
        raise ProtocolError(
            f"client_request_id must be a string of at most {MAX_CLIENT_REQUEST_ID} characters"
        )
    images, errors, digests = decode_contents(_column_values(keys[0], document[keys[0]]))
    return ParsedRequest(keys[0], images, errors, digests, client_id, document)


def decode_contents(
    values: Sequence[object],
) -> tuple[list[bytes | None], list[str | None], list[str | None]]:
    """Decode ``content`` values (base64 strings; bytes are taken as they are): the bytes (None
    for a bad row), the row errors and the sha256 digests (hex) of the bytes, or of the raw
    string of a bad row."""
    images: list[bytes | None] = []
    errors: list[str | None] = []
    digests: list[str | None] = []
    for value in values:
        if isinstance(value, (bytes, bytearray, memoryview)):
            data, error = (bytes(value), None) if len(value) else (None, "empty image data")
        else:
            data, error = _decode_value(value)
        images.append(data)
        errors.append(error)
        if data is not None:
            digests.append(hashlib.sha256(data).hexdigest())
        elif isinstance(value, str):
            digests.append(hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest())
        else:
            digests.append(None)
    return images, errors, digests


def logged_request(parsed: ParsedRequest) -> str:
    """The request as JSON for the inference log, each ``content`` value replaced by
    ``"sha256:<hex>"`` (the bytes' digest), so no image, and no identifier burnt into one,
    is kept."""
    key = parsed.payload_key
    digests = iter(parsed.digests)

    def mark() -> str | None:
        digest = next(digests)
        return None if digest is None else f"sha256:{digest}"

    # `parse_request` checked the shape: an object for dataframe_split, else an object or a list
    payload = parsed.document[key]
    shown: object
    if key == "dataframe_split" and isinstance(payload, dict):
        columns = payload.get("columns") or [INPUT_COLUMN]
        index = columns.index(INPUT_COLUMN)
        data = [[mark() if j == index else v for j, v in enumerate(row)] for row in payload["data"]]
        shown = {"columns": columns, "data": data}
    elif isinstance(payload, dict):
        content = payload[INPUT_COLUMN]
        n = len(content) if isinstance(content, list) else 1
        shown = {**payload, INPUT_COLUMN: [mark() for _ in range(n)]}
    elif isinstance(payload, list) and payload and all(isinstance(r, dict) for r in payload):
        shown = [{**record, INPUT_COLUMN: mark()} for record in payload]
    else:  # a list of values: one digest each
        shown = [mark() for _ in parsed.digests]
    out: dict[str, object] = {key: shown}
    if parsed.client_request_id is not None:
        out["client_request_id"] = parsed.client_request_id
    return json.dumps(out, separators=(",", ":"))


def prediction_rows(
    columns: Sequence[str],
    batch_rows: Sequence[Row],
    row_errors: Sequence[str | None],
    model_name: str,
    model_version: str,
) -> list[Row]:
    """One answer row per input row: the core's row for decoded rows, and for rows that could
    not be decoded every column NULL except model_name, model_version and error. ``columns`` are
    the predict batch's columns, in order (new columns flow through unchanged)."""
    scored = iter(batch_rows)
    rows: list[Row] = []
    for error in row_errors:
        if error is None:
            rows.append(next(scored))
        else:
            row = dict.fromkeys(columns)
            row.update(model_name=model_name, model_version=model_version, error=error)
            rows.append(row)
    return rows


def warmup_png(side: int = 96) -> bytes:
    """A small grey-gradient PNG (8-bit grayscale), generated: no patient image needed (the
    request that builds a model's ONNX Runtime session before traffic)."""
    pixels = bytes((x + y) % 256 for y in range(side) for x in range(side))
    return grayscale_png(pixels, side, side)
