"""Online scoring: `cxrlake serve` (the MLflow / Databricks Model Serving scoring protocol with
micro-batching, champion and challenger, an inference table), the MLflow pyfunc, and the model
aliases `cxrlake promote` moves. See docs/serving.md.

- `protocol`: requests and answers (dataframe_split / dataframe_records / inputs, base64 bytes);
- `batcher`: concurrent requests into one core call, bounded queue;
- `models`: served entities, traffic routing, model specs (file, @alias, models:/ URI);
- `server`: the HTTP server (standard library ThreadingHTTPServer);
- `inference_log`: the local inference table, written in batches;
- `registry`: local aliases, MLflow / Unity Catalog aliases, the comparison table;
- `pyfunc`: the MLflow pyfunc (imports mlflow);
- `cli`: ``cxrlake serve`` and ``cxrlake promote``.
"""
