"""Local lakehouse: bronze -> silver -> gold Delta tables (delta-rs), SQL (DuckDB), report.

Public entry points: `run_pipeline` (``cxrlake pipeline run``), `connect` (``cxrlake sql``),
`write_report` (``cxrlake report``) and `maintain` (``cxrlake maintain``). Table names and schemas
live in `cxrlake.lakehouse.schemas`; the batch transforms shared with Spark in
`cxrlake.lakehouse.transforms`.
"""
