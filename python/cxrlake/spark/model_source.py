"""Which model gold scores with: the registered ``@champion`` when there is one, else the shipped.

`resolve_champion` asks the MLflow registry (Unity Catalog on Databricks: ``registry_uri
"databricks-uc"``) for ``<catalog>.<models schema>.pneumonia_classifier@champion``. When the model
or the alias does not exist yet, gold scores with the model shipped in the wheel. Otherwise the
champion's ONNX file is downloaded and written to ``dest_dir`` (a volume path the workers can
read) with its registry identity stamped into the model's metadata: ``cxrlake.model_name`` = the
registered name, ``cxrlake.model_version`` = the registry version. Every prediction records the
model's name and version (``gold.pneumonia_predictions.model_name`` / ``model_version``), so each
row names the registered version that scored it. Any other registry error (no permission, no
network) fails the job with the registry's message: gold never silently scores with another model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrlake.spark.deployment import Deployment
from cxrlake.spark.local_runtime import storage_path

CHAMPION = "champion"
NAME_KEY = "cxrlake.model_name"
VERSION_KEY = "cxrlake.model_version"
_METADATA_PROPS = 14  # ModelProto.metadata_props (onnx.proto), repeated StringStringEntryProto


@dataclass(frozen=True)
class ModelSource:
    """The model gold scores with: ``path`` None = the shipped model."""

    path: str | None
    name: str
    version: str | None
    reason: str


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """Top-level protobuf fields of ``data`` as (field number, wire type, raw bytes incl. tag)."""
    out = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf field")
        out.append((number, wire, data[start:pos]))
    return out


def _entry(key: str, value: str) -> bytes:
    def string_field(number: int, text: str) -> bytes:
        raw = text.encode("utf-8")
        return _encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw

    body = string_field(1, key) + string_field(2, value)
    return _encode_varint(_METADATA_PROPS << 3 | 2) + _encode_varint(len(body)) + body


def _entry_key(raw: bytes) -> str | None:
    _, pos = _varint(raw, 0)
    length, pos = _varint(raw, pos)
    for number, wire, field in _fields(raw[pos : pos + length]):
        if number == 1 and wire == 2:
            _, p = _varint(field, 0)
            n, p = _varint(field, p)
            return field[p : p + n].decode("utf-8")
    return None


def stamp_identity(model_bytes: bytes, name: str, version: str) -> bytes:
    """The ONNX model with ``cxrlake.model_name`` / ``cxrlake.model_version`` set to ``name`` and
    ``version`` (other metadata, the graph and the weights byte for byte unchanged)."""
    kept = [
        raw
        for number, wire, raw in _fields(model_bytes)
        if not (
            number == _METADATA_PROPS and wire == 2 and _entry_key(raw) in (NAME_KEY, VERSION_KEY)
        )
    ]
    return b"".join(kept) + _entry(NAME_KEY, name) + _entry(VERSION_KEY, version)


def _not_found(error: Exception) -> bool:
    code = getattr(error, "error_code", "") or ""
    text = str(error)
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "RESOURCE_DOES_NOT_EXIST" in text


def resolve_champion(
    model_name: str,
    dest_dir: str | os.PathLike[str],
    registry_uri: str | None = None,
    client: Any = None,
    alias: str = CHAMPION,
) -> ModelSource:
    """The ``model_name@alias`` version as a local ONNX file in ``dest_dir``, or the shipped model
    (``path`` None) when the model or the alias does not exist. ``registry_uri``: default
    ``$MLFLOW_REGISTRY_URI``, else ``databricks-uc``."""
    import mlflow  # the 'serve' or 'spark' extra

    if client is None:
        mlflow.set_registry_uri(
            registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or "databricks-uc"
        )
        client = mlflow.MlflowClient()
    dest_dir = storage_path(str(dest_dir))
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except Exception as e:  # MlflowException / RestException
        if _not_found(e):
            return ModelSource(None, model_name, None, f"no {model_name}@{alias}: shipped model")
        raise
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version.version}", dst_path=tmp
            )
        )
        candidates = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
        if not candidates:
            raise FileNotFoundError(f"{model_name} version {version.version} holds no .onnx file")
        stamped = stamp_identity(candidates[0].read_bytes(), model_name, str(version.version))
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        # tensors a model keeps in external data files are found next to it, by file name
        for extra in candidates[0].parent.iterdir():
            if extra.is_file() and extra.suffix not in (".onnx", ".yaml", ".json", ".txt", ".py"):
                shutil.copyfile(extra, dest / extra.name)
    target = dest / f"{model_name.rsplit('.', 1)[-1]}-v{version.version}.onnx"
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(stamped)
    shutil.move(str(partial), str(target))  # never a half-written model at the final path
    return ModelSource(
        str(target), model_name, str(version.version), f"{model_name}@{alias} = v{version.version}"
    )


def job_model(deployment: Deployment, model: str | None) -> ModelSource:
    """The one model resolution of the silver and gold jobs: ``model`` (an ``.onnx`` path, the
    job parameter) when given, else ``<registered model>@champion`` when registered (written to
    the models libraries volume), else the shipped model. Both jobs resolve alike, so silver's
    features and gold's predictions come from one model version and the "done" rule of the
    medallion (keyed on the model) finds yesterday's images done; a silver pass with another
    model than gold's would re-decode and re-score all of bronze every day."""
    if model:
        return ModelSource(model, model, None, f"model parameter {model}")
    return resolve_champion(
        deployment.model_name(),
        dest_dir=deployment.volume_path("models", "libraries") + "/models",
    )
