"""The names a bundle target deploys: catalog and schemas, and what is derived from them.

In ``mode: development`` the Databricks CLI prefixes the name of every bundle-managed schema and
registered model with ``dev_<user>_`` (CLI v1.13.0, ``bundle/config/mutator/resourcemutator/
apply_presets.go``: ``s.Name = normalizePrefix(prefix) + s.Name`` for schemas and registered
models; volumes keep their name inside the renamed schema). So no job may spell ``bronze``,
``models`` or ``pneumonia_classifier`` itself: the jobs receive ``${resources.schemas.<key>.name}``
and ``${resources.registered_models.<key>.name}`` as parameters, and every table, volume path, SQL
parameter and model name is built here from a validated `Deployment`. The secret scope of the
de-identification key is per environment too (``${var.deid_secret_scope}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxrlake.exceptions import CxrlakeError
from cxrlake.spark import sql_files

MODEL_KEY = "pneumonia_classifier"
"""Key of the registered model in the bundle (``resources.registered_models.<key>``). Never used
as its name: development mode deploys it as ``dev_<user>_pneumonia_classifier``, so a job gets the
deployed name as its ``registered_model`` parameter (``Deployment.registered_model``)."""
SECRET_SCOPE = "cxrlake"
"""Secret scope of the de-identification key without a bundle; a bundle job gets its
environment's scope (``deid_secret_scope`` parameter, ``cxrlake-<env>``)."""

# healthcare_catalog_<env>, or Spark's session catalog on the local runtime
# (`make databricks-local`, cxrlake.spark.local_runtime.LOCAL_CATALOG: no Unity Catalog there)
_CATALOG = re.compile(r"healthcare_catalog_[a-z0-9_]+|spark_catalog")
_SCHEMA = re.compile(r"[a-z0-9_]{1,255}")
# secret scope names: letters, digits, '-', '_', '.', '@' (https://docs.databricks.com/aws/en/security/secrets/)
_SCOPE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


class DeploymentError(CxrlakeError, ValueError):
    """A catalog or schema name is not of the form a bundle target deploys."""


@dataclass(frozen=True)
class Deployment:
    """Catalog and schema names of one deployed target (e.g. schemas ``dev_ana_bronze`` ...),
    the registered model's name and the secret scope of the de-identification key."""

    catalog: str
    bronze: str = "bronze"
    silver: str = "silver"
    gold: str = "gold"
    models: str = "models"
    registered_model: str | None = None
    secret_scope: str = SECRET_SCOPE

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
        if self.registered_model is not None and not _SCHEMA.fullmatch(self.registered_model):
            raise DeploymentError(
                f"registered_model {self.registered_model!r} is not a model name the bundle "
                "deploys (lowercase letters, digits, '_'; e.g. dev_<user>_<name> in development "
                "mode)"
            )
        if not _SCOPE.fullmatch(self.secret_scope or ""):
            raise DeploymentError(
                f"deid_secret_scope {self.secret_scope!r} is not a secret scope name (letters, "
                "digits, '-', '_', '.', '@'; e.g. cxrlake-prod)"
            )

    @classmethod
    def from_parameters(
        cls,
        catalog: str,
        bronze_schema: str,
        silver_schema: str,
        gold_schema: str,
        models_schema: str,
        registered_model: str | None = None,
        deid_secret_scope: str | None = None,
    ) -> Deployment:
        """From job parameters / notebook widgets (surrounding blanks ignored). The registered
        model is optional (jobs that never name the model need none); the secret scope defaults
        to `SECRET_SCOPE`. An empty value is an error."""
        return cls(
            catalog=(catalog or "").strip(),
            bronze=(bronze_schema or "").strip(),
            silver=(silver_schema or "").strip(),
            gold=(gold_schema or "").strip(),
            models=(models_schema or "").strip(),
            registered_model=None if registered_model is None else registered_model.strip(),
            secret_scope=SECRET_SCOPE if deid_secret_scope is None else deid_secret_scope.strip(),
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

    def model_name(self) -> str:
        """Unity Catalog name of the registered model: ``<catalog>.<models>.<registered_model>``.
        Raises DeploymentError when the deployment was built without the model's name."""
        if self.registered_model is None:
            raise DeploymentError(
                "no registered model name: pass the job parameter registered_model "
                "(${resources.registered_models.<key>.name}, the name as deployed)"
            )
        return f"{self.catalog}.{self.models}.{self.registered_model}"

    def sql_params(self) -> dict[str, str]:
        """``${catalog}`` and ``${<key>_schema}`` of the files in ``sql/``."""
        params = {"catalog": self.catalog}
        params.update({f"{key}_schema": self.schema(key) for key in sql_files.SCHEMA_KEYS})
        return params
