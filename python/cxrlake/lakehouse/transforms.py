"""The local engine's view of the medallion transforms, identity rules and metrics.

Defined once in `cxrlake.medallion` (`identity`, `transforms`, `metrics`); re-exported here so
the local lakehouse's import path keeps working.
"""

from __future__ import annotations

from cxrlake.medallion.identity import (  # noqa: F401 - re-exports
    ImageIdentity,
    identify,
    image_id_for,
    label_of,
    prediction_id,
    sha256_hex,
    utc_now,
)
from cxrlake.medallion.metrics import (  # noqa: F401 - re-exports
    evaluation_id,
    model_performance,
    predictions_fingerprint,
    roc_auc,
)
from cxrlake.medallion.transforms import (  # noqa: F401 - re-exports
    AnalyzedBatches,
    SilverBatches,
    analyze_batch,
    bronze_batch,
    gold_predictions_batch,
    listing_quarantine_batch,
    quarantine_reason,
    silver_batch,
)
