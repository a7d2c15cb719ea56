"""The port the review app reads and writes through: `ReviewStore`.

One implementation, `cxrlake.review.service.CatalogReviewStore`, written over the catalog port
(`cxrlake.catalog.Catalog`); its adapters only say where the tables are: `cxrlake.review.store.
LocalStore` (a local lakehouse, `LocalCatalog`) and `cxrlake.review.warehouse.WarehouseStore`
(Unity Catalog tables through a Databricks SQL warehouse, `WarehouseCatalog`); on a cluster the
same store runs over `cxrlake.spark.catalog.SparkCatalog`. The server and the worklist are
written against this Protocol only, so every rule runs unchanged on any engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from cxrlake.columns import Row


class ReviewReader(Protocol):
    """What the review rules read: predictions, folder labels, verdicts, label history."""

    def predictions(self) -> list[Row]:
        """Current predictions joined to silver (quality score, the threshold that decided)."""
        ...

    def prediction(self, prediction_id: str) -> Row | None: ...

    def folder_labels(self) -> dict[str, int | None]:
        """image_id -> the label of the folder the film came from (None: unlabelled)."""
        ...

    def feedback(self, prediction_id: str | None = None) -> list[Row]: ...

    def label_history(self, image_id: str | None = None) -> list[Row]:
        """Label-history rows ordered by (image_id, valid_from)."""
        ...


class ReviewStore(ReviewReader, Protocol):
    """A review store: the reads above, the stored agreement, image bytes and the writes (each
    serialised by the store, idempotent under re-posts)."""

    engine: str

    def agreement(self) -> list[Row]: ...

    def current_agreement(self) -> list[Row]:
        """The agreement figures of the current verdicts (computed, not stored)."""
        ...

    def image(self, image_id: str) -> tuple[bytes, str]:
        """The bytes to send for an image and their media type; `ReviewError` when unknown."""
        ...

    def record_verdict(self, payload: Mapping[str, object], reviewer: str) -> tuple[Row, bool]:
        """(stored row, created): one verdict appended, then the label history updated."""
        ...

    def sync_history(self) -> int:
        """Bring the label history up to date; history rows inserted."""
        ...

    def write_agreement(self) -> int:
        """Append the agreement figures for a new set of verdicts; rows written."""
        ...


__all__ = ["ReviewReader", "ReviewStore", "Row"]
