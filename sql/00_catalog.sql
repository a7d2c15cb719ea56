-- Catalog of one environment: healthcare_catalog_<env> (dev, pilot, prod), and the catalog-level
-- grants the bundle cannot give (it manages schemas, volumes and the model inside the catalog).
-- A metastore admin runs this once per environment, before the first `bundle deploy`
-- (docs/databricks.md, first-deployment checklist). Idempotent.
-- Parameters: ${catalog}; ${engineers_group}, ${readers_group} (existing account groups);
-- ${deployer} (the user or service principal that runs `bundle deploy` and the jobs).
--
-- Privileges (https://docs.databricks.com/aws/en/data-governance/unity-catalog/manage-privileges/privileges):
-- USE CATALOG is required to reach any object inside the catalog, in addition to USE SCHEMA on
-- its schema and SELECT / EXECUTE / READ VOLUME on the object itself. The deployer creates the
-- bundle's schemas, so it needs CREATE SCHEMA here, and MANAGE: creating the review app with a
-- volume resource makes Databricks grant the app's service principal USE CATALOG on this catalog
-- in the deployer's name (https://docs.databricks.com/aws/en/dev-tools/databricks-apps/uc-volumes,
-- "Privilege requirements").

CREATE CATALOG IF NOT EXISTS ${catalog}
COMMENT 'cxrlake chest X-ray lakehouse (bronze, silver, gold, models)';

GRANT USE CATALOG, CREATE SCHEMA, MANAGE ON CATALOG ${catalog} TO `${deployer}`;
GRANT USE CATALOG ON CATALOG ${catalog} TO `${engineers_group}`;
GRANT USE CATALOG ON CATALOG ${catalog} TO `${readers_group}`;
