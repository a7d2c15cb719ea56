"""The SQL files in ``sql/``: parameters, rendering, splitting into statements, running.

The files are parameterised with ``${name}`` placeholders (``${catalog}``, ``${bronze_schema}``
and the other schema names the bundle deploys, ``${wheel_path}``, ``${readers_group}``,
``${retain_hours}``, ...). Named parameter markers (``:catalog``) cannot be used
because Databricks forbids them inside view and function bodies and in the ``ENVIRONMENT``
clause; so every value is validated against a strict pattern *before* it is substituted, which
rules out SQL injection. Rendering needs no Spark: tests parse every rendered file with sqlglot.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cxrlake.exceptions import CxrlakeError
from cxrlake.spark.local_runtime import is_oss

if TYPE_CHECKING:  # rendering needs no Spark (the review app and the tests render without it)
    from pyspark.sql import SparkSession

PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")

SCHEMA_KEYS = ("bronze", "silver", "gold", "models")
"""The schemas of the lakehouse, by the key the bundle gives them (resources.schemas.<key>)."""
_PRINCIPAL = re.compile(r"[A-Za-z0-9_.@+ -]{1,128}")
_SCHEMA = re.compile(r"[a-z0-9_]{1,255}")

# What each parameter may look like. Anything else is rejected, so substitution is safe.
PARAMETER_PATTERNS: dict[str, re.Pattern[str]] = {
    # Unity Catalog catalog of one environment: healthcare_catalog_<env>.
    # (spark_catalog: Spark's session catalog on the local runtime, cxrlake.spark.local_runtime)
    "catalog": re.compile(r"healthcare_catalog_[a-z0-9_]+|spark_catalog"),
    # The cxrlake wheel in a UC volume (a valid wheel file name, no quotes or spaces).
    "wheel_path": re.compile(
        r"/Volumes/[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]+/(?:[A-Za-z0-9_.-]+/)*"
        r"cxrlake-[A-Za-z0-9_.+-]+\.whl"
    ),
    # Principals (user, group or service principal name) for GRANT ... TO `principal`.
    "readers_group": _PRINCIPAL,
    "engineers_group": _PRINCIPAL,
    "deployer": _PRINCIPAL,
    # the review app's service principal (application ID) in 14_review_app_grants.sql
    "app_principal": _PRINCIPAL,
    # Schemas as the bundle deploys them in the target: `bronze` in production, `dev_<user>_bronze`
    # in development mode (lowercased, non-alphanumerics replaced by `_` by the CLI).
    **{f"{layer}_schema": _SCHEMA for layer in SCHEMA_KEYS},
    # A Model Serving endpoint name as deployed (letters, digits, '-' and '_'; dev: prefixed).
    "serving_endpoint": re.compile(r"[A-Za-z0-9_-]{1,63}"),
    # VACUUM retention in hours: at least a week (Delta's safety check default).
    "retain_hours": re.compile(r"(?:16[89]|1[7-9]\d|[2-9]\d\d|\d{4,6})"),
}


class SqlParameterError(CxrlakeError, ValueError):
    """A SQL file parameter is missing, unknown or does not have the required form."""


def default_sql_dir() -> Path:
    """``sql/`` of the source tree (the bundle syncs it next to the notebooks)."""
    return Path(__file__).resolve().parents[3] / "sql"


def placeholders(text: str) -> set[str]:
    """Names of the ``${name}`` placeholders in ``text``."""
    return set(PLACEHOLDER.findall(text))


def validate_parameter(name: str, value: object) -> str:
    """Return ``value`` as a string if it is a valid value of parameter ``name``."""
    pattern = PARAMETER_PATTERNS.get(name)
    if pattern is None:
        raise SqlParameterError(
            f"unknown SQL parameter {name!r} (known: {sorted(PARAMETER_PATTERNS)})"
        )
    text = str(value)
    if not pattern.fullmatch(text):
        raise SqlParameterError(f"invalid value {text!r} for SQL parameter {name!r}")
    return text


def render(text: str, params: Mapping[str, object]) -> str:
    """Substitute every ``${name}`` of ``text`` with the validated ``params[name]``."""
    missing = placeholders(text) - set(params)
    if missing:
        raise SqlParameterError(f"missing SQL parameters: {', '.join(sorted(missing))}")
    values = {name: validate_parameter(name, value) for name, value in params.items()}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def split_statements(text: str) -> list[str]:
    """Split SQL text at top-level ``;`` (not inside quotes, backticks, ``$$`` bodies or
    comments). Returns the statements without the ``;``, comments kept, empty ones dropped."""
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif text.startswith("$$", i):
            j = text.find("$$", i + 2)
            if j < 0:
                raise ValueError("unterminated $$ block")
            i = j + 2
        elif c in ("'", '"', "`"):
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValueError(f"unterminated {c} quote")
            i = j + 1
        elif c == ";":
            statements.append(text[start:i])
            start = i = i + 1
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _strip_comments(s).strip()]


def _strip_comments(statement: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S)


def rendered_statements(path: str | Path, params: Mapping[str, object]) -> list[str]:
    """The statements of one SQL file with its parameters substituted."""
    text = Path(path).read_text(encoding="utf-8")
    return split_statements(
        render(text, {k: v for k, v in params.items() if k in placeholders(text)})
    )


def sql_files(sql_dir: str | Path | None = None, pattern: str = "*.sql") -> Iterator[Path]:
    """The files of ``sql_dir`` (default: `default_sql_dir`) in execution order (by name)."""
    yield from sorted(Path(sql_dir or default_sql_dir()).glob(pattern))


_DATABRICKS_ONLY: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"CREATE\s+CATALOG\b", re.I),
        "a catalog is a Unity Catalog object; Spark's session catalog cannot create one",
    ),
    (
        re.compile(r"(GRANT|REVOKE)\b", re.I),
        "Unity Catalog privileges: open-source Spark has no GRANT and no principals",
    ),
    (
        re.compile(r"CREATE\s+(OR\s+REPLACE\s+)?VOLUME\b", re.I),
        "a volume is a Unity Catalog object; locally each volume is a folder under "
        "$CXRLAKE_VOLUMES_ROOT",
    ),
    (
        re.compile(r"CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\b.*\bLANGUAGE\s+PYTHON\b", re.I | re.S),
        "a Unity Catalog Python UDF (sandboxed, ENVIRONMENT dependencies) runs on Databricks only",
    ),
    (
        re.compile(r"CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\b.*\bai_query\s*\(", re.I | re.S),
        "ai_query calls a Model Serving endpoint: Databricks SQL only",
    ),
)
_FUNCTION_NAME = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([\w.]+)", re.I)


def databricks_only(statements: list[str]) -> dict[int, str]:
    """Statements (by index) that only Databricks runs, with the reason: Unity Catalog objects and
    privileges, Python UDFs, ``ai_query``, and SQL functions calling a function skipped before.
    Everything else runs on open-source Spark with Delta Lake (`cxrlake.spark.local_runtime`)."""
    out: dict[int, str] = {}
    skipped: list[str] = []
    for i, statement in enumerate(statements):
        text = _strip_comments(statement).strip()
        reason = next((why for rule, why in _DATABRICKS_ONLY if rule.match(text)), None)
        name = _FUNCTION_NAME.match(text)
        if reason is None and name:
            calls = [f for f in skipped if re.search(rf"\b{re.escape(f)}\s*\(", text)]
            if calls:
                reason = f"calls {calls[0]}, which runs on Databricks only"
        if reason is not None:
            out[i] = reason
            if name:
                skipped.append(name.group(1).rsplit(".", 1)[-1])
    return out


def run_sql_file(spark: SparkSession, path: str | Path, params: Mapping[str, object]) -> int:
    """Run every statement of a SQL file on ``spark``; return how many ran. On the local runtime
    (`cxrlake.spark.local_runtime.is_oss`) the statements `databricks_only` names are skipped,
    each printed with its reason (docs/databricks.md lists them)."""
    statements = rendered_statements(path, params)
    skip = databricks_only(statements) if is_oss(spark) else {}
    for i, statement in enumerate(statements):
        if i in skip:
            first = _strip_comments(statement).strip().splitlines()[0]
            print(f"skipped on open-source Spark ({Path(path).name}): {first[:90]}: {skip[i]}")
            continue
        spark.sql(statement)
    return len(statements) - len(skip)
