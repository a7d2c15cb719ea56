-- Gold views over silver: the dataset summary (images by split and label with the quality-score
-- distribution) and the quarantine as the dashboard shows it.
-- Same columns as DATASET_SUMMARY_SQL in python/cxrlake/lakehouse/schemas.py (the local DuckDB
-- view); quantile_cont there is percentile_cont ... WITHIN GROUP here.
-- Parameters: ${catalog}, ${silver_schema}, ${gold_schema}.

CREATE OR REPLACE VIEW ${catalog}.${gold_schema}.dataset_summary
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
FROM ${catalog}.${silver_schema}.xray_metadata AS m
GROUP BY ALL
ORDER BY 1, 2;

-- The quarantine as the dashboard shows it. The dashboard sets one schema for all its datasets
-- (dataset_schema = the gold schema of the target), so what it shows from silver is a gold view.
CREATE OR REPLACE VIEW ${catalog}.${gold_schema}.quarantined_images
COMMENT 'Quarantined files with the reason, newest first (silver.quarantine)'
AS SELECT q.image_id, q.file_path, q.dataset_split, q.stage, q.reason, q.quarantined_at
FROM ${catalog}.${silver_schema}.quarantine AS q;
