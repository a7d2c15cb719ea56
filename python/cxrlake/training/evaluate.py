"""Binary classification metrics of training: those of `cxrlake.medallion.metrics`.

One metrics module serves training, both lakehouse engines and the report; this module keeps
training's import path. Threshold rule: see `cxrlake.medallion.metrics.choose_threshold`.
"""

from __future__ import annotations

from cxrlake.medallion.metrics import binary_metrics, choose_threshold, roc_auc

__all__ = ["binary_metrics", "choose_threshold", "roc_auc"]
