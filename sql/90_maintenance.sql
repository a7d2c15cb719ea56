-- Table maintenance: compact and co-locate rows by image_id (every lookup and MERGE joins on it),
-- then remove files older than the retention. Run by jobs/maintenance.py.
-- Parameters: ${catalog}, ${retain_hours} (an integer >= 168, so that time travel and concurrent
-- readers keep a week of history; validated before rendering).

OPTIMIZE ${catalog}.bronze.kaggle_xray_metadata ZORDER BY (image_id);
OPTIMIZE ${catalog}.silver.xray_metadata ZORDER BY (image_id);
OPTIMIZE ${catalog}.silver.image_features ZORDER BY (image_id);
OPTIMIZE ${catalog}.silver.quarantine ZORDER BY (image_id);
OPTIMIZE ${catalog}.gold.pneumonia_predictions ZORDER BY (image_id);
OPTIMIZE ${catalog}.gold.model_performance ZORDER BY (evaluation_id);

VACUUM ${catalog}.bronze.kaggle_xray_metadata RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.silver.xray_metadata RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.silver.image_features RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.silver.quarantine RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.gold.pneumonia_predictions RETAIN ${retain_hours} HOURS;
VACUUM ${catalog}.gold.model_performance RETAIN ${retain_hours} HOURS;
