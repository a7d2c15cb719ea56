"""The review store of a local lakehouse: `cxrlake.review.service.CatalogReviewStore` over
`cxrlake.lakehouse.catalog.LocalCatalog` (delta-rs), plus what only a local lakehouse has.

- Writers are serialised by the store's ``threading.Lock`` plus an exclusive ``flock`` on
  ``<catalog>/_cxrlake_review.lock`` (other processes serving the same lakehouse).
- Each server thread gets its own `LocalCatalog`: the `Lakehouse` it holds caches DeltaTable
  objects, which threads must not share.
- Images are served from their source file when it lies inside the sandbox roots (the lakehouse
  and the sources the pipeline recorded) and is unchanged since ingestion, else from bronze.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import schemas
from cxrlake.review.images import read_sandboxed
from cxrlake.review.service import CatalogReviewStore
from cxrlake.review.tables import ReviewError

REVIEW_LOCK = "_cxrlake_review.lock"


class LocalStore(CatalogReviewStore):
    """The review tables of a local lakehouse ``<root>/healthcare_catalog_<env>``."""

    engine = "local"

    def __init__(self, lakehouse: str | os.PathLike[str], env: str = "dev") -> None:
        self._where = (lakehouse, env)
        self._per_thread = threading.local()
        super().__init__(self.catalog)
        if not self.catalog.exists(schemas.PREDICTIONS):
            raise FileNotFoundError(
                f"no gold.pneumonia_predictions under {self.lh.catalog}: "
                "run `cxrlake pipeline run --lakehouse ...` first"
            )
        roots = [self.lh.root, *self.lh.recorded_sources()]
        self.roots = [os.path.realpath(r) for r in roots]

    @property
    def catalog(self) -> LocalCatalog:
        """This thread's catalog (the port `cxrlake.catalog.Catalog`)."""
        catalog: LocalCatalog | None = getattr(self._per_thread, "catalog", None)
        if catalog is None:
            catalog = self._per_thread.catalog = LocalCatalog.at(*self._where)
        return catalog

    @property
    def lh(self) -> Lakehouse:
        """This thread's `Lakehouse` (its folders: the catalog, the recorded sources)."""
        return self.catalog.lakehouse

    def source_bytes(self, file_path: str) -> bytes | None:
        try:
            return read_sandboxed(file_path, self.roots)
        except ReviewError:
            # Missing, moved outside the roots (a symlink swapped in), not a regular file: the
            # bytes kept in bronze are the ones scored, so they are served instead.
            return None

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._lock:
            os.makedirs(self.lh.catalog, exist_ok=True)
            fd = os.open(os.path.join(self.lh.catalog, REVIEW_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


__all__ = ["REVIEW_LOCK", "LocalStore"]
