"""Shared set-up of the review tests: a small real lakehouse and a running review server."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa

IMAGES_PER_LABEL = 4


def build_lakehouse(shared_data: Path, root: Path) -> tuple[Path, Path]:
    """Copy a few full-resolution images per label into ``root/src/fullres`` and run the
    pipeline on them into ``root/lakehouse``; give one prediction a heatmap when the pipeline
    wrote none (the contract: ``struct<rows, cols, values list<float32>>``)."""
    from cxrlake.lakehouse.pipeline import run_pipeline

    source = root / "src" / "fullres"
    for label in ("NORMAL", "PNEUMONIA"):
        (source / label).mkdir(parents=True)
        files = sorted((shared_data / "chest_xray_fullres" / label).glob("*.jpeg"))
        for f in files[:IMAGES_PER_LABEL]:
            shutil.copyfile(f, source / label / f.name)
    lakehouse = root / "lakehouse"
    run_pipeline([str(source)], str(lakehouse), progress=False)
    ensure_heatmap(lakehouse)
    return lakehouse, source


def ensure_heatmap(lakehouse: Path) -> None:
    """At least one prediction with a heatmap and one without: the model's own maps when it
    writes them (one is then removed), else a synthetic 5x5 map on the first row."""
    from deltalake import DeltaTable, write_deltalake

    from cxrlake.medallion import schemas

    path = schemas.PREDICTIONS.path(lakehouse)
    table = DeltaTable(path).to_pyarrow_table()
    heat_type = pa.struct(
        [("rows", pa.int32()), ("cols", pa.int32()), ("values", pa.list_(pa.float32()))]
    )
    if "heatmap" in table.schema.names:
        heat = table.column("heatmap").to_pylist()
        heat_type = table.schema.field("heatmap").type
        table = table.drop_columns(["heatmap"])
    else:
        heat = [None] * table.num_rows
    if all(h is None for h in heat):
        rows, cols = 5, 5
        values = [float((r - 2) ** 2 + (c - 1) ** 2 <= 2) for r in range(rows) for c in range(cols)]
        heat[0] = {"rows": rows, "cols": cols, "values": values}
    if all(h is not None for h in heat):
        heat[-1] = None
    table = table.append_column("heatmap", pa.array(heat, heat_type))
    write_deltalake(path, table, mode="overwrite", schema_mode="overwrite")


class Running:
    """A review server in a thread: ``url``, ``store``, ``post``/``get`` helpers."""

    def __init__(self, lakehouse: Path, reviewer: str) -> None:
        from cxrlake.review.server import make_server
        from cxrlake.review.store import LocalStore

        self.store = LocalStore(lakehouse)
        self.store.sync_history()
        self.server = make_server(self.store, "127.0.0.1", 0, reviewer)
        self.url = self.server.url.rstrip("/")
        self.reviewer = reviewer
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.token = self.get("/api/session")[1]["csrf_token"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, payload, hdrs = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            status, payload, hdrs = e.code, e.read(), dict(e.headers)
        ctype = hdrs.get("Content-Type", "")
        if ctype.startswith("application/json"):
            return status, json.loads(payload), hdrs
        return status, payload, hdrs

    def get(self, path: str) -> tuple[int, Any]:
        status, payload, _ = self.request("GET", path)
        return status, payload

    def post(self, path: str, body: Any, **overrides: str) -> tuple[int, Any]:
        headers = {
            "Content-Type": "application/json",
            "X-CSRF-Token": self.token,
            "Origin": self.url,
        }
        headers.update({k.replace("_", "-"): v for k, v in overrides.items()})
        headers = {k: v for k, v in headers.items() if v is not None}
        status, payload, _ = self.request("POST", path, body, headers)
        return status, payload


def feedback_version(store: Any) -> int:
    """The Delta version of gold.prediction_feedback in the store's lakehouse, -1 before it exists
    (a refused verdict must leave it where it was)."""
    from deltalake import DeltaTable

    from cxrlake.review.tables import FEEDBACK

    return DeltaTable(store.lh.path(FEEDBACK)).version() if store.lh.exists(FEEDBACK) else -1
