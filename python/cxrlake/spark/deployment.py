"""The names a bundle target deploys: catalog and schemas, and what is derived from them.

In ``mode: development`` the Databricks CLI prefixes the name of every bundle-managed schema and
registered model with ``dev_<user>_`` (CLI v1.13.0, ``bundle/config/mutator/resourcemutator/
apply_presets.go``: ``s.Name = normalizePrefix(prefix) + s.Name`` for schemas and registered
models; volumes keep their name inside the renamed schema). So no job may spell ``bronze`` or
``models`` itself: the jobs receive ``${resources.schemas.<key>.name}`` as parameters, and every
table, volume path, SQL parameter and model name is built here from a validated `Deployment`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxrlake.spark import sql_files

MODEL_KEY = "pneumonia_classifier"
"""Name of the registered model in the models schema (bundle: resources.registered_models)."""

_CATALOG = re.compile(r"healthcare_catalog_[a-z0-9_]+")
_SCHEMA = re.compile(r"[a-z0-9_]{1,255}")


class DeploymentError(ValueError):
    """A catalog or schema name is not of the form a bundle target deploys."""


@dataclass(frozen=True)
class Deployment:
    """Catalog and schema names of one deployed target (e.g. schemas ``dev_ana_bronze`` ...)."""

    catalog: str
    bronze: str = "bronze"
    silver: str = "silver"
    gold: str = "gold"
    models: str = "models"

    def __post_init__(self) -> None:
        if not _CATALOG.fullmatch(self.catalog or ""):
            raise DeploymentError(
                f"catalog {self.catalog!r} is not healthcare_catalog_<env> "
                "(e.g. healthcare_catalog_dev)"
            )
        for key in sql_files.SCHEMA_KEYS:
            value = getattr(self, key)
            if not _SCHEMA.fullmatch(value or ""):
                raise DeploymentError(
                    f"{key}_schema {value!r} is not a schema name the bundle deploys "
                    f"(lowercase letters, digits, '_'; e.g. {key} or dev_<user>_{key})"
                )

    @classmethod
    def from_parameters(
        cls,
        catalog: str,
        bronze_schema: str,
        silver_schema: str,
        gold_schema: str,
        models_schema: str,
    ) -> Deployment:
        """From job parameters / notebook widgets (surrounding blanks ignored)."""
        return cls(
            catalog=(catalog or "").strip(),
            bronze=(bronze_schema or "").strip(),
            silver=(silver_schema or "").strip(),
            gold=(gold_schema or "").strip(),
            models=(models_schema or "").strip(),
        )

    def schema(self, key: str) -> str:
        """Deployed name of the schema ``key`` (bronze, silver, gold, models)."""
        if key not in sql_files.SCHEMA_KEYS:
            raise KeyError(f"unknown schema key {key!r} (known: {sql_files.SCHEMA_KEYS})")
        return getattr(self, key)

    def table(self, qualified_name: str) -> str:
        """``<schema key>.<table>`` (e.g. ``bronze.kaggle_xray_metadata``) as deployed."""
        key, _, table = qualified_name.partition(".")
        return f"{self.catalog}.{self.schema(key)}.{table}"

    def volume_path(self, key: str, volume: str) -> str:
        """``/Volumes/<catalog>/<deployed schema>/<volume>``."""
        return f"/Volumes/{self.catalog}/{self.schema(key)}/{volume}"

    def model_name(self, name: str = MODEL_KEY) -> str:
        """Unity Catalog name of a registered model in the models schema."""
        return f"{self.catalog}.{self.models}.{name}"

    def sql_params(self) -> dict[str, str]:
        """``${catalog}`` and ``${<key>_schema}`` of the files in ``sql/``."""
        params = {"catalog": self.catalog}
        params.update({f"{key}_schema": self.schema(key) for key in sql_files.SCHEMA_KEYS})
        return params
