"""Radiologist review loop: a web app over the lakehouse, the feedback table, label history and
agreement figures.

- `cxrlake.review.tables`: table schemas (``gold.prediction_feedback``, ``silver.label_history``,
  ``gold.review_agreement``) and the rules (verdict validation, SCD2 label history, need score).
- `cxrlake.review.worklist`: worklist order and filters, agreement rate and Cohen's kappa.
- `cxrlake.review.store`: the local store (delta-rs); `cxrlake.review.warehouse`: the Databricks
  store (SQL warehouse).
- `cxrlake.review.server`: the HTTP server (``cxrlake review``; a Databricks App in
  ``bundle/apps/review``).
"""
