"""`cxrlake.columns` states each kernel's output schema once: it must be what the core returns."""

from __future__ import annotations

import pyarrow as pa

import cxrlake
from cxrlake import columns


def test_the_written_schemas_are_the_kernels_own():
    model = cxrlake.Model()
    none = pa.array([], pa.string())
    assert cxrlake.predict(none, model=model).schema == columns.PREDICT
    assert cxrlake.features(none, model=model).schema == columns.FEATURES
    assert cxrlake.features(none, embedding=False).schema == columns.FEATURES
    assert cxrlake.analyze(none, model=model).schema == columns.ANALYZE
    assert cxrlake.explain(none, model=model).schema == columns.EXPLAIN


def test_every_reader_of_the_kernels_takes_them_from_one_module():
    from cxrlake.medallion import analysis, schemas
    from cxrlake.spark import udfs

    assert analysis.ANALYSIS_SCHEMA is columns.ANALYZE
    assert schemas.HEATMAP is columns.HEATMAP
    assert pa.struct(columns.PREDICT) == udfs.PREDICT_RESULT
    assert pa.struct(columns.FEATURES) == udfs.FEATURES_RESULT
    assert pa.struct(columns.ANALYZE) == udfs.ANALYZE_RESULT
    assert pa.struct(columns.EXPLAIN) == udfs.EXPLAIN_RESULT
