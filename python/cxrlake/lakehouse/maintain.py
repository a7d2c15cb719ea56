"""Table maintenance (``cxrlake maintain``): OPTIMIZE (compact), Z-order on image_id, VACUUM.

Runs under the lakehouse lock, so it never races a pipeline run. VACUUM keeps at least the
tables' ``delta.deletedFileRetentionDuration`` (7 days): files a reader of a recent version may
still need, or a time-travel query, are never deleted. It also removes data files left behind by
killed runs once they are older than the retention.
"""

from __future__ import annotations

import os
from typing import Any

from cxrlake.lakehouse import schemas
from cxrlake.lakehouse.storage import Lakehouse, LakehouseLock, commit_properties

MIN_RETENTION_HOURS = 168
"""VACUUM never removes files younger than this (hours): the tables' deleted-file retention."""


def maintain(
    lakehouse: str | os.PathLike,
    env: str = "dev",
    retention_hours: int = MIN_RETENTION_HOURS,
    dry_run: bool = False,
    zorder: bool = True,
) -> list[dict[str, Any]]:
    """Compact, Z-order (on ``image_id`` where the table has it) and vacuum every table.

    ``retention_hours`` below `MIN_RETENTION_HOURS` is refused. ``dry_run`` only lists the files
    VACUUM would delete (compaction still runs). Returns one dict per table: files before/after,
    files removed by OPTIMIZE, files deleted (or to delete) by VACUUM.
    """
    if retention_hours < MIN_RETENTION_HOURS:
        raise ValueError(
            f"retention_hours={retention_hours} is below the safe minimum of "
            f"{MIN_RETENTION_HOURS} h (7 days): readers and time travel could lose files"
        )
    lh = Lakehouse(lakehouse, env)
    results = []
    with LakehouseLock(lh.root, lh.env):
        for spec in schemas.TABLES:
            if not lh.exists(spec):
                continue
            table = lh.table(spec)
            before = len(table.file_uris())
            props = commit_properties(operation="maintain")
            if zorder and "image_id" in spec.arrow_schema.names and before > 1:
                opt = table.optimize.z_order(["image_id"], commit_properties=props)
                action = "z-order(image_id)"
            else:
                opt = table.optimize.compact(commit_properties=props)
                action = "compact"
            table = lh.table(spec)
            table.create_checkpoint()
            vacuumed = table.vacuum(
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=True,
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
                    "vacuum_dry_run": dry_run,
                    "version": lh.table(spec).version(),
                }
            )
    return results


def format_results(results: list[dict[str, Any]]) -> str:
    """Text table of `maintain` results."""
    lines = [
        f"{'table':<30} {'optimize':<18} {'files':>12} {'vacuum':>8}",
    ]
    for r in results:
        files = f"{r['files_before']} -> {r['files_after']}"
        vac = f"{r['vacuum_files']}{' (dry)' if r['vacuum_dry_run'] else ''}"
        lines.append(f"{r['table']:<30} {r['optimize']:<18} {files:>12} {vac:>8}")
    return "\n".join(lines)
