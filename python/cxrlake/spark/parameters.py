"""Job parameters every Databricks job validates the same way: the error they raise, principals
for GRANT, and the ``sql/`` folder (`cxrlake.spark.jobs` and `cxrlake.spark.serving`)."""

from __future__ import annotations

import os
from pathlib import Path

from cxrlake.exceptions import CxrlakeError
from cxrlake.spark import sql_files


class JobParameterError(CxrlakeError, ValueError):
    """A notebook widget holds an invalid value; the message says which and what is expected."""


def validate_principal(value: str) -> str:
    """A user, group or service principal name for GRANT."""
    value = (value or "").strip()
    try:
        return sql_files.validate_parameter("readers_group", value)
    except sql_files.SqlParameterError as e:
        raise JobParameterError(str(e)) from None


def sql_dir(path: str | os.PathLike[str] | None) -> Path:
    """``path``, else ``sql/`` of the source tree; `JobParameterError` when it is no folder."""
    folder = Path(path) if path else sql_files.default_sql_dir()
    if not folder.is_dir():
        raise JobParameterError(f"sql directory {str(folder)!r} not found")
    return folder


__all__ = ["JobParameterError", "sql_dir", "validate_principal"]
