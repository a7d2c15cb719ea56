"""Table maintenance (``cxrlake maintain``): OPTIMIZE (compact), Z-order on image_id, VACUUM.

Runs under the lakehouse lock, so it never races a pipeline run; a dry run only reads.
VACUUM keeps at least the tables' ``delta.deletedFileRetentionDuration`` (7 days): files a
reader of a recent version may still need, or a time-travel query, are never deleted. It also
removes data files left behind by killed runs once they are older than the retention.
"""

from __future__ import annotations

import os
from typing import TypedDict

from cxrlake.lakehouse.storage import Lakehouse, LakehouseLock, commit_properties
from cxrlake.medallion import schemas
from cxrlake.medallion.schemas import REVIEW_TABLES
from cxrlake.medallion.serving import SERVING_TABLES

MIN_RETENTION_HOURS = 168
"""VACUUM never removes files younger than this (hours): the tables' deleted-file retention."""


class TableMaintenance(TypedDict):
    """What `maintain` did (or, in a dry run, would do) to one table."""

    table: str
    optimize: str
    files_before: int
    files_after: int
    files_removed_by_optimize: int
    vacuum_files: int
    vacuum_paths: list[str]
    vacuum_dry_run: bool
    version: int


def maintain(
    lakehouse: str | os.PathLike[str],
    env: str = "dev",
    retention_hours: int = MIN_RETENTION_HOURS,
    dry_run: bool = False,
    zorder: bool = True,
) -> list[TableMaintenance]:
    """Compact, Z-order (on ``image_id`` where the table has it) and vacuum every table.

    ``retention_hours`` below `MIN_RETENTION_HOURS` is refused; a lakehouse without a catalog
    raises ``FileNotFoundError`` before anything is created. ``dry_run`` changes nothing (no
    commit, no lock file, no checkpoint): it lists the files VACUUM would delete and the
    OPTIMIZE each table would get. Returns one dict per table: files before/after, files
    removed by OPTIMIZE, files deleted (or to delete) by VACUUM (``vacuum_paths``).
    """
    if retention_hours < MIN_RETENTION_HOURS:
        raise ValueError(
            f"retention_hours={retention_hours} is below the safe minimum of "
            f"{MIN_RETENTION_HOURS} h (7 days): readers and time travel could lose files"
        )
    lh = Lakehouse(lakehouse, env)
    if not os.path.isdir(lh.catalog):
        raise FileNotFoundError(f"no lakehouse at {lh.catalog}")
    if dry_run:
        return [_plan(lh, spec, retention_hours, zorder) for spec in _existing(lh)]
    results: list[TableMaintenance] = []
    with LakehouseLock(lh.root, lh.env):
        for spec in _existing(lh):
            table = lh.table(spec)
            before = len(table.file_uris())
            props = commit_properties(operation="maintain")
            action = _optimize_action(spec, before, zorder)
            if action.startswith("z-order"):
                opt = table.optimize.z_order(["image_id"], commit_properties=props)
            else:
                opt = table.optimize.compact(commit_properties=props)
            table = lh.table(spec)
            table.create_checkpoint()
            vacuumed = table.vacuum(
                retention_hours=retention_hours,
                dry_run=False,
                enforce_retention_duration=True,
                full=True,  # also files no version references (left by killed runs)
                commit_properties=commit_properties(operation="vacuum"),
            )
            results.append(
                {
                    "table": spec.qualified_name,
                    "optimize": action,
                    "files_before": before,
                    "files_after": len(lh.table(spec).file_uris()),
                    "files_removed_by_optimize": int(opt.get("numFilesRemoved", 0)),
                    "vacuum_files": len(vacuumed),
                    "vacuum_paths": sorted(vacuumed),
                    "vacuum_dry_run": False,
                    "version": lh.table(spec).version(),
                }
            )
    return results


def _existing(lh: Lakehouse) -> list[schemas.TableSpec]:
    return [spec for spec in (*schemas.TABLES, *REVIEW_TABLES, *SERVING_TABLES) if lh.exists(spec)]


def _optimize_action(spec: schemas.TableSpec, files: int, zorder: bool) -> str:
    if zorder and "image_id" in spec.arrow_schema.names and files > 1:
        return "z-order(image_id)"
    return "compact"


def _plan(
    lh: Lakehouse, spec: schemas.TableSpec, retention_hours: int, zorder: bool
) -> TableMaintenance:
    """What `maintain` would do to one table, read without committing anything."""
    table = lh.table(spec)
    files = len(table.file_uris())
    vacuumed = table.vacuum(
        retention_hours=retention_hours, dry_run=True, enforce_retention_duration=True, full=True
    )
    return {
        "table": spec.qualified_name,
        "optimize": _optimize_action(spec, files, zorder) if files > 1 else "none",
        "files_before": files,
        "files_after": files,
        "files_removed_by_optimize": 0,
        "vacuum_files": len(vacuumed),
        "vacuum_paths": sorted(vacuumed),
        "vacuum_dry_run": True,
        "version": table.version(),
    }


def format_results(results: list[TableMaintenance]) -> str:
    """Text table of `maintain` results; a dry run also lists the files VACUUM would delete."""
    dry = any(r["vacuum_dry_run"] for r in results)
    lines = [
        "dry run: nothing was changed" if dry else "",
        f"{'table':<30} {'optimize':<18} {'files':>12} {'vacuum':>8}",
    ]
    for r in results:
        files = f"{r['files_before']} -> {r['files_after']}" if not dry else str(r["files_before"])
        lines.append(f"{r['table']:<30} {r['optimize']:<18} {files:>12} {r['vacuum_files']:>8}")
    if dry:
        paths = [(r["table"], p) for r in results for p in r["vacuum_paths"]]
        lines.append(f"files VACUUM would delete: {len(paths)}")
        lines += [f"  {table}: {path}" for table, path in paths]
    return "\n".join(line for line in lines if line)
