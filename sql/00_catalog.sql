-- Catalog of one environment: healthcare_catalog_<env> (dev, pilot, prod).
-- Needs CREATE CATALOG on the metastore, so an admin runs this once per environment; the bundle
-- (bundle/) and the other files in sql/ only create objects inside it.
-- Parameters: ${catalog}, rendered by cxrlake.spark.sql_files (validated identifier).

CREATE CATALOG IF NOT EXISTS ${catalog}
COMMENT 'cxrlake chest X-ray lakehouse (bronze, silver, gold, models)';
