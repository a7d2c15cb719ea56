"""A decision threshold on the model's probability, applied to a `cxrlake.predict` batch.

A threshold is a plain probability (``threshold_source`` ``argument``) or a site's stored
threshold, `SiteThreshold` (``site:<site_id>:v<version>``), which ``cxrlake calibrate`` writes to
``gold.site_thresholds`` and `cxrlake.calibration` reads back. This module sits with the kernels:
`cxrlake.predict(threshold=...)` and the medallion transforms apply thresholds through it without
importing calibration (which reads and writes tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.exceptions import InvalidArgumentError
from cxrlake.model import LABEL_NAMES

__all__ = ["SiteThreshold", "apply_threshold", "resolve_threshold"]


@dataclass(frozen=True)
class SiteThreshold:
    """A stored site threshold: ``threshold`` on the model's probability, and its provenance."""

    site_id: str
    version: int
    threshold: float
    model_name: str
    model_version: str

    @property
    def source(self) -> str:
        """Value of the ``threshold_source`` column: ``site:<site_id>:v<version>``."""
        return f"site:{self.site_id}:v{self.version}"


def resolve_threshold(threshold: float | SiteThreshold) -> SiteThreshold | tuple[float, str]:
    """Check a ``threshold=`` argument: a `SiteThreshold`, or a probability in [0, 1].

    Raises `cxrlake.InvalidArgumentError` for anything else.
    """
    if isinstance(threshold, SiteThreshold):
        return threshold
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(
            f"threshold must be a probability in [0, 1] or a SiteThreshold, got {threshold!r}"
        )
    return value, "argument"


def apply_threshold(
    batch: pa.RecordBatch, threshold: float | SiteThreshold | tuple[float, str]
) -> pa.RecordBatch:
    """``batch`` of `cxrlake.predict` re-labelled at ``threshold``, with the columns
    ``threshold double`` and ``threshold_source string`` (``site:<id>:v<n>`` or ``argument``)
    appended. Rows with an error keep null labels.
    """
    decision = threshold if isinstance(threshold, tuple) else resolve_threshold(threshold)
    if isinstance(decision, SiteThreshold):
        names = set(batch.column("model_name").drop_null().to_pylist())
        versions = set(batch.column("model_version").drop_null().to_pylist())
        if names - {decision.model_name} or versions - {decision.model_version}:
            raise InvalidArgumentError(
                f"threshold {decision.source} was calibrated for {decision.model_name} "
                f"{decision.model_version}, not for the model that scored these images"
            )
        value, source = decision.threshold, decision.source
    else:
        value, source = decision
    probability = batch.column("probability")
    predicted = pc.cast(pc.greater_equal(probability, value), pa.int32())
    label_name = pc.if_else(
        pc.equal(predicted, 1), pa.scalar(LABEL_NAMES[1]), pa.scalar(LABEL_NAMES[0])
    )
    columns = {name: batch.column(name) for name in batch.schema.names}
    columns["predicted_label"] = predicted
    columns["label_name"] = label_name.cast(batch.schema.field("label_name").type)
    n = batch.num_rows
    columns["threshold"] = pa.array([value] * n, pa.float64())
    columns["threshold_source"] = pa.array([source] * n, pa.string())
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
