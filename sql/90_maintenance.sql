-- Table maintenance, run by jobs/maintenance.py weekly. The tables use liquid clustering
-- (CLUSTER BY in 1x_*.sql), so OPTIMIZE clusters by those keys; ZORDER is what the docs advise
-- against for them (https://docs.databricks.com/aws/en/delta/optimize). Where predictive
-- optimization is enabled for the catalog, Databricks runs OPTIMIZE and VACUUM on these managed
-- tables itself (https://docs.databricks.com/aws/en/optimizations/predictive-optimization) and
-- this job only repeats them cheaply.
-- Parameters: ${catalog}, ${bronze_schema}, ${silver_schema}, ${gold_schema}, ${retain_hours}
-- (an integer >= 168, so that time travel and concurrent readers keep a week of history;
-- validated before rendering).

OPTIMIZE ${catalog}.${bronze_schema}.kaggle_xray_metadata;
OPTIMIZE ${catalog}.${silver_schema}.xray_metadata;
OPTIMIZE ${catalog}.${silver_schema}.image_features;
OPTIMIZE ${catalog}.${silver_schema}.quarantine;
OPTIMIZE ${catalog}.${gold_schema}.pneumonia_predictions;
OPTIMIZE ${catalog}.${gold_schema}.model_performance;
OPTIMIZE ${catalog}.${gold_schema}.site_thresholds;
OPTIMIZE ${catalog}.${gold_schema}.drift_metrics;
OPTIMIZE ${catalog}.${gold_schema}.prediction_feedback;
OPTIMIZE ${catalog}.${silver_schema}.label_history;
OPTIMIZE ${catalog}.${gold_schema}.review_agreement;

VACUUM ${catalog}.${bronze_schema}.kaggle_xray_metadata RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${silver_schema}.xray_metadata RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${silver_schema}.image_features RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${silver_schema}.quarantine RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${gold_schema}.pneumonia_predictions RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${gold_schema}.model_performance RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${gold_schema}.site_thresholds RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${gold_schema}.drift_metrics RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${gold_schema}.prediction_feedback RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${silver_schema}.label_history RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.${gold_schema}.review_agreement RETAIN ${retain_hours} HOURS;
