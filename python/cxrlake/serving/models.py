"""What `cxrlake serve` serves: one model, or a champion and a challenger with a traffic share.

A model is named by a spec: None (the model shipped in the wheel), an ONNX file path,
``@champion`` / ``@challenger`` (the local registry of the lakehouse, `cxrlake.serving.registry`),
or an MLflow URI ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` (downloaded from the
registry MLflow is pointed at, e.g. ``MLFLOW_REGISTRY_URI=databricks-uc``; the file is stamped
with the registered name and version, as gold does).

Routing is deterministic: with share ``s`` the challenger answers request ``n`` (0, 1, 2, ...)
exactly when ``floor((n + 1) * s) > floor(n * s)``, i.e. ``s`` of the requests, spread evenly
(0.1: requests 9, 19, 29 ...; 0.5: every second request). A request can also name the entity it
wants (``POST /served-models/<name>/invocations``), as Databricks allows.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cxrlake.model import Model
from cxrlake.serving.batcher import MicroBatcher
from cxrlake.serving.registry import LocalRegistry
from cxrlake.spark.model_source import stamp_identity

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class ServedModel:
    """One served entity: its name on the endpoint, the model and its batcher."""

    entity_name: str
    model: Model
    batcher: MicroBatcher

    @property
    def model_name(self) -> str:
        return str(self.model.name)

    @property
    def model_version(self) -> str:
        return str(self.model.version)

    def describe(self) -> dict[str, str]:
        return {
            "served_entity_name": self.entity_name,
            "model_name": self.model_name,
            "model_version": self.model_version,
        }


class Router:
    """Picks the served entity of each request (see the module docstring)."""

    def __init__(
        self, champion: ServedModel, challenger: ServedModel | None = None, share: float = 0.0
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"challenger share must be between 0 and 1, got {share}")
        if challenger is None and share > 0:
            raise ValueError("a challenger share needs a challenger model")
        self.champion = champion
        self.challenger = challenger
        self.share = share
        self._count = 0
        self._lock = threading.Lock()

    @property
    def entities(self) -> list[ServedModel]:
        return [m for m in (self.champion, self.challenger) if m is not None]

    def by_name(self, name: str) -> ServedModel | None:
        return next((m for m in self.entities if m.entity_name == name), None)

    def route(self) -> ServedModel:
        with self._lock:
            n = self._count
            self._count += 1
        if self.challenger is not None and math.floor((n + 1) * self.share) > math.floor(
            n * self.share
        ):
            return self.challenger
        return self.champion

    def close(self) -> None:
        for entity in self.entities:
            entity.batcher.close()


def resolve_model_file(
    spec: str | None, lakehouse: str | None = None, env: str = "dev"
) -> str | None:
    """The local ONNX file of a model spec (None: the shipped model). Raises ValueError with a
    message a user can act on."""
    if spec is None:
        return None
    if spec.startswith("@"):
        if lakehouse is None:
            raise ValueError(f"{spec} names a model in the lakehouse registry: pass --lakehouse")
        entry = LocalRegistry(lakehouse, env).get(spec[1:])
        if entry is None:
            raise ValueError(
                f"no model has the alias {spec[1:]!r} in the lakehouse registry "
                f"(set one with `cxrlake promote --lakehouse {lakehouse} --alias {spec[1:]} FILE`)"
            )
        return entry["model_path"]
    if spec.startswith("models:/"):
        return _download_registered(spec)
    if not os.path.isfile(spec):
        raise ValueError(f"model file not found: {spec}")
    return spec


def _download_registered(uri: str) -> str:
    """Download ``models:/name@alias`` or ``models:/name/version`` and stamp its identity."""
    import mlflow  # the 'serve' extra

    rest = uri[len("models:/") :]
    client = mlflow.MlflowClient()
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    else:
        name, _, version = rest.rpartition("/")
    dest = Path(tempfile.mkdtemp(prefix="cxrlake-serve-"))
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(dest)
        )
    )
    candidates = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
    if not candidates:
        raise ValueError(f"{name} version {version} holds no .onnx file")
    target = dest / f"{name.rsplit('.', 1)[-1]}-v{version}.onnx"
    target.write_bytes(stamp_identity(candidates[0].read_bytes(), name, version))
    return str(target)
