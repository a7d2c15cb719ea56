"""Self-contained HTML report over the lakehouse (``cxrlake report``).

One file, no external assets: charts are inline SVG. Sections: overview, class balance,
quality-score histogram, per-split ROC curve + confusion matrix + metrics, calibration, example
predictions, quarantine list, dataset summary, data attribution. Patient images are embedded
only on request (``thumbnails=True``), and the top of the report says which it is.

- `queries`: the data, as Arrow tables; `charts`: the SVG charts; `png`: thumbnails as PNG;
  `attribution`: where the data attribution comes from; `overlays`: where the model looked;
  `review`: the radiologists' agreement; `page`: the HTML.

The services it shows (`cxrlake.provenance`, `cxrlake.metrics_service`) read the tables through
the catalog port (`cxrlake.lakehouse.catalog.LocalCatalog`); the rest is SQL over
`cxrlake.lakehouse.sql.connect`.
"""

from __future__ import annotations

import os

from cxrlake.files import write_text_atomically
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.lakehouse.report import attribution, page, queries
from cxrlake.lakehouse.sql import connect
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import schemas

__all__ = ["build_report", "write_report"]


def build_report(
    lakehouse: str | os.PathLike[str],
    env: str = "dev",
    examples: int = 8,
    *,
    thumbnails: bool = False,
    attribution_files: list[str] | None = None,
) -> str:
    """The HTML report of one lakehouse catalog.

    ``examples``: example predictions listed (>= 0); ``thumbnails``: embed downscaled images of
    them; ``attribution_files``: text files citing the data (default: found next to the
    sources, see `attribution`).
    """
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be an integer >= 0, got {examples!r}")
    lh = Lakehouse(lakehouse, env)
    con = connect(lakehouse, env, udfs=False)
    try:
        silver = queries.silver_images(con)
        credit = attribution.resolve(
            attribution_files,
            lh.recorded_sources(),
            (n for n in silver.column("filename").to_pylist()),
        )
        where = schemas.catalog_path(os.path.abspath(os.fspath(lakehouse)), env)
        return page.build_page(con, LocalCatalog(lh), where, examples, thumbnails, credit, silver)
    finally:
        con.close()


def write_report(
    lakehouse: str | os.PathLike[str],
    out: str | os.PathLike[str],
    env: str = "dev",
    examples: int = 8,
    *,
    thumbnails: bool = False,
    attribution_files: list[str] | None = None,
) -> str:
    """Write the HTML report to ``out`` (in full or not at all); return its path."""
    text = build_report(
        lakehouse, env, examples, thumbnails=thumbnails, attribution_files=attribution_files
    )
    return write_text_atomically(out, text)
