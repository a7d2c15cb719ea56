-- Dataset summary: images by split and label with the quality-score distribution.
-- Same columns as DATASET_SUMMARY_SQL in python/cxrlake/lakehouse/schemas.py (the local DuckDB
-- view); quantile_cont there is percentile_cont ... WITHIN GROUP here.
-- Parameters: ${catalog}.

CREATE OR REPLACE VIEW ${catalog}.gold.dataset_summary
COMMENT 'Images by split and label, quality-score distribution (silver.xray_metadata)'
AS SELECT
  m.dataset_split,
  coalesce(m.label_name, 'UNLABELLED') AS label_name,
  count(*) AS image_count,
  avg(m.quality_score) AS quality_mean,
  min(m.quality_score) AS quality_min,
  percentile_cont(0.25) WITHIN GROUP (ORDER BY m.quality_score) AS quality_p25,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY m.quality_score) AS quality_median,
  percentile_cont(0.75) WITHIN GROUP (ORDER BY m.quality_score) AS quality_p75,
  max(m.quality_score) AS quality_max,
  avg(m.image_width) AS mean_width,
  avg(m.image_height) AS mean_height
FROM ${catalog}.silver.xray_metadata AS m
GROUP BY ALL
ORDER BY 1, 2;
