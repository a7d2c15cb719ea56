"""sql/: every file renders and parses (sqlglot, Databricks dialect); the DDL matches the shared
table schemas exactly; the warehouse predict function is well formed; parameters are safe."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from cxrlake.medallion import schemas
from cxrlake.review import tables as review_tables
from cxrlake.spark import sql_files
from cxrlake.spark.schemas import spark_type

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"
# Schema names as development mode deploys them: no SQL file may spell `bronze` etc. itself.
DEPLOYED = {key: f"dev_ana_{key}" for key in sql_files.SCHEMA_KEYS}
PARAMS = {
    "catalog": "healthcare_catalog_dev",
    **{f"{key}_schema": name for key, name in DEPLOYED.items()},
    "engineers_group": "cxrlake-engineers",
    "deployer": "6f1e2d3c-0000-4000-8000-000000000001",
    "app_principal": "0a1b2c3d-0000-4000-8000-00000000a99",
    "wheel_path": "/Volumes/healthcare_catalog_dev/models/libraries/"
    "cxrlake-0.1.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "readers_group": "cxrlake-readers",
    "retain_hours": "168",
    "serving_endpoint": "dev_ana_cxrlake-pneumonia-dev",
}
# Statements sqlglot only knows as opaque commands: each must match its whole pattern.
IDENT = r"healthcare_catalog_dev(?:\.[a-z_]+){0,2}"
PRINCIPAL = r"`[A-Za-z0-9_.@ -]+`"
COMMANDS = [
    re.compile(rf"CREATE CATALOG IF NOT EXISTS {IDENT}\s+COMMENT '[^']+'"),
    re.compile(rf"CREATE VOLUME IF NOT EXISTS {IDENT}\s+COMMENT '[^']+'"),
    re.compile(rf"OPTIMIZE {IDENT}"),
    re.compile(rf"GRANT [A-Z ,]+ ON CATALOG {IDENT} TO {PRINCIPAL}"),
    re.compile(rf"VACUUM {IDENT} RETAIN 168 HOURS"),
]
FILES = sorted(SQL_DIR.glob("*.sql"))


def _statements(path: Path) -> list[str]:
    return sql_files.rendered_statements(path, PARAMS)


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text).strip()


def test_sql_dir_has_one_file_per_concern():
    assert [f.name for f in FILES] == [
        "00_catalog.sql",
        "01_schemas.sql",
        "02_volumes.sql",
        "10_bronze_tables.sql",
        "11_silver_tables.sql",
        "12_gold_tables.sql",
        "13_review_tables.sql",
        "14_review_app_grants.sql",
        "20_dataset_summary_view.sql",
        "30_predict_function.sql",
        "40_predict_endpoint_function.sql",
        "90_maintenance.sql",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_statement_parses_in_the_databricks_dialect(path):
    text = path.read_text()
    assert sql_files.placeholders(text) <= set(PARAMS)
    assert "${catalog}" in text  # never a hard-coded environment
    statements = _statements(path)
    assert statements
    for statement in statements:
        assert "${" not in statement
        parsed = sqlglot.parse(statement, read="databricks")
        assert len(parsed) == 1, statement
        # every schema is the one the bundle deployed, never a literal `bronze`, `gold`, ...
        for table in parsed[0].find_all(exp.Table):
            if table.db:
                assert table.db in DEPLOYED.values(), (path.name, table.sql())
        if isinstance(parsed[0], exp.Command):
            body = _strip_comments(statement)
            assert any(p.fullmatch(body) for p in COMMANDS), body


def _create_tables() -> dict[str, exp.Create]:
    tables = {}
    for path in FILES:
        for statement in _statements(path):
            parsed = sqlglot.parse_one(statement, read="databricks")
            if isinstance(parsed, exp.Create) and parsed.kind == "TABLE":
                table = parsed.this.this
                key = next(k for k, v in DEPLOYED.items() if v == table.db)
                tables[f"{key}.{table.name}"] = parsed
    return tables


def test_tables_have_exactly_the_shared_schema_and_change_data_feed():
    tables = _create_tables()
    review = {spec.qualified_name for spec in review_tables.REVIEW_TABLES}  # test_review.py
    assert set(tables) == {spec.qualified_name for spec in schemas.TABLES} | review
    for spec in schemas.TABLES:
        create = tables[spec.qualified_name]
        assert create.this.this.catalog == "healthcare_catalog_dev"
        columns = [
            (
                c.name,
                c.args["kind"].sql("databricks").upper(),
                any(isinstance(k.kind, exp.NotNullColumnConstraint) for k in c.constraints),
            )
            for c in create.this.expressions
        ]
        expected = [
            (f.name, spark_type(f.type).simpleString().upper(), not f.nullable)
            for f in spec.arrow_schema
        ]
        # sqlglot prints STRUCT<a: T> with blanks, Spark's simpleString without
        assert [(n, t.replace(" ", ""), k) for n, t, k in columns] == [
            (n, t.replace(" ", ""), k) for n, t, k in expected
        ], spec.qualified_name
        props = {
            p.name: p.text("value")
            for p in create.args["properties"].expressions
            if isinstance(p, exp.Property) and not isinstance(p, exp.SchemaCommentProperty)
        }
        for key, value in schemas.TABLE_PROPERTIES.items():
            assert props.get(key) == value, (spec.qualified_name, key)
        assert "USING DELTA" in create.sql("databricks").upper()
        # liquid clustering on the MERGE key, not ZORDER
        # (https://docs.databricks.com/aws/en/delta/clustering)
        cluster = create.find(exp.Cluster) or create.find(exp.ClusteredByProperty)
        text = create.sql("databricks").upper()
        assert cluster is not None or "CLUSTER BY" in text, spec.qualified_name
        assert f"CLUSTER BY ({spec.keys[0].upper()}" in text.replace("`", ""), spec.qualified_name


def test_dataset_summary_view_has_the_columns_of_the_local_view():
    statement = _statements(SQL_DIR / "20_dataset_summary_view.sql")[0]
    view = sqlglot.parse_one(statement, read="databricks")
    assert view.kind == "VIEW"
    gold_view = schemas.DATASET_SUMMARY_VIEW.replace("gold.", DEPLOYED["gold"] + ".")
    assert view.this.sql() == "healthcare_catalog_dev." + gold_view
    local = sqlglot.parse_one(schemas.DATASET_SUMMARY_SQL, read="duckdb")
    select = view.expression
    assert [e.alias_or_name for e in select.expressions] == [
        e.alias_or_name for e in local.expressions
    ]
    assert [f"{t.catalog}.{t.db}.{t.name}" for t in select.find_all(exp.Table)] == [
        f"healthcare_catalog_dev.{DEPLOYED['silver']}.xray_metadata"
    ]


def test_warehouse_predict_functions_scan_only_what_they_score_and_keep_readers_off_bytes():
    statements = _statements(SQL_DIR / "30_predict_function.sql")
    python_udf, struct_fn, table_fn, *grants = statements
    assert "PARAMETER STYLE PANDAS" in python_udf
    # the batch UDF returns a scalar (the documented form): JSON, parsed by a SQL function
    assert "predict_image_json(content BINARY)\nRETURNS STRING\n" in python_udf
    from cxrlake.spark.warehouse_udf import PREDICT_JSON_SCHEMA

    assert f"'{PREDICT_JSON_SCHEMA}'" in struct_fn
    assert f"from_json(\n  healthcare_catalog_dev.{DEPLOYED['models']}.predict_image_json(" in (
        struct_fn
    )
    assert f"dependencies = '[\"{PARAMS['wheel_path']}\"]'" in python_udf
    handler = re.search(r"HANDLER '(\w+)'", python_udf).group(1)
    body = re.search(r"AS \$\$(.*)\$\$", python_udf, re.S).group(1)
    tree = ast.parse(body)
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {("cxrlake.spark.warehouse_udf", handler)}
    from cxrlake.spark import warehouse_udf

    assert callable(getattr(warehouse_udf, handler))
    # predict(path) is a table function: the path is a constant filter on one scan of bronze,
    # no correlated aggregate over every stored image
    parsed = sqlglot.parse_one(table_fn, read="databricks")
    assert "RETURNS TABLE" in table_fn
    query = parsed.expression
    query = query.this if isinstance(query, exp.Return) else query
    assert isinstance(query, exp.Select)
    assert not list(query.find_all(exp.Subquery))
    assert not any(isinstance(a, (exp.Max, exp.ArgMax)) for a in query.find_all(exp.AggFunc))
    tables = {f"{t.db}.{t.name}" for t in query.find_all(exp.Table)}
    assert tables == {f"{DEPLOYED['bronze']}.kaggle_xray_metadata"}
    where = query.args["where"].sql("databricks")
    assert "file_path = predict.path" in where
    assert f"{DEPLOYED['models']}.predict_image(" in table_fn
    # the Python UDF returns the struct of cxrlake.predict / Spark predict()
    from cxrlake.spark.udfs import PREDICT_RESULT

    struct = (
        "STRUCT<"
        + ", ".join(
            f"{f.name}: {spark_type(f.type).simpleString().upper()}" for f in PREDICT_RESULT
        )
        + ">"
    )
    assert struct in struct_fn and struct in table_fn
    assert (
        ", ".join(f"{f.name} {spark_type(f.type).simpleString().upper()}" for f in PREDICT_RESULT)
        == PREDICT_JSON_SCHEMA
    )
    # readers: EXECUTE on predict_image (its argument only); the bytes-reading function goes to
    # the engineers, who hold SELECT on bronze whichever rights its body runs with
    granted = [(g.split(" ON FUNCTION ")[1].split(" TO ")[0], g.split(" TO ")[-1]) for g in grants]
    models_fn = f"healthcare_catalog_dev.{DEPLOYED['models']}.predict_image"
    json_fn = f"{models_fn}_json"
    bronze_fn = f"healthcare_catalog_dev.{DEPLOYED['bronze']}.predict"
    assert sorted(granted) == sorted(
        [
            (json_fn, "`cxrlake-readers`"),
            (json_fn, "`cxrlake-engineers`"),
            (models_fn, "`cxrlake-readers`"),
            (models_fn, "`cxrlake-engineers`"),
            (bronze_fn, "`cxrlake-engineers`"),
        ]
    )


def test_catalog_file_grants_use_catalog_to_readers_engineers_and_the_deployer():
    grants = [s for s in _statements(SQL_DIR / "00_catalog.sql") if s.lstrip().startswith("GRANT")]
    text = "\n".join(grants)
    for principal in ("cxrlake-readers", "cxrlake-engineers", PARAMS["deployer"]):
        assert re.search(rf"GRANT USE CATALOG.* TO `{re.escape(principal)}`", text), principal
    # the deployer creates the schemas, and the review app whose volume resource makes Databricks
    # grant the app's principal USE CATALOG in the deployer's name (MANAGE on the catalog)
    deployer = next(g for g in grants if g.endswith(f"`{PARAMS['deployer']}`"))
    assert deployer.startswith("GRANT USE CATALOG, CREATE SCHEMA, MANAGE ON CATALOG ")


def test_maintenance_optimizes_and_vacuums_every_table_the_setup_job_creates():
    from cxrlake.spark import jobs

    statements = [_strip_comments(s) for s in _statements(SQL_DIR / "90_maintenance.sql")]
    created = [
        parsed.this.this.sql()
        for name in jobs.TABLES_SQL
        for statement in _statements(SQL_DIR / name)
        if isinstance(parsed := sqlglot.parse_one(statement, read="databricks"), exp.Create)
        and parsed.kind == "TABLE"
    ]
    assert len(created) >= len(schemas.TABLES)
    for name in created:
        assert f"OPTIMIZE {name}" in statements, name  # liquid clustering: no ZORDER
        assert f"VACUUM {name} RETAIN 168 HOURS" in statements, name
    assert not any("ZORDER" in s for s in statements)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("catalog", "healthcare_catalog_dev; DROP CATALOG x"),
        ("catalog", "main"),
        ("wheel_path", "/Volumes/c/s/v/cxrlake.whl'] ; --"),
        ("wheel_path", "/tmp/cxrlake-0.1.0-py3-none-any.whl"),
        ("readers_group", "x` TO `y"),
        ("retain_hours", "24"),
        ("retain_hours", "168 HOURS; DROP"),
    ],
)
def test_render_rejects_values_that_are_not_of_the_expected_form(name, value):
    with pytest.raises(sql_files.SqlParameterError):
        sql_files.render(f"${{{name}}}", {name: value})


def test_render_requires_every_placeholder():
    with pytest.raises(sql_files.SqlParameterError, match="missing SQL parameters: catalog"):
        sql_files.render("SELECT 1 FROM ${catalog}.gold.x", {})


def test_split_statements_respects_quotes_dollar_bodies_and_comments():
    text = """
    -- a comment; not a statement
    CREATE FUNCTION f() RETURNS INT LANGUAGE PYTHON AS $$
    x = 1; y = 2
    return x
    $$;
    SELECT 'a;b', `c;d` FROM t; /* c; */
    ;
    """
    statements = sql_files.split_statements(text)
    assert len(statements) == 2
    assert statements[0].endswith("$$") and "x = 1; y = 2" in statements[0]
    assert statements[1] == "SELECT 'a;b', `c;d` FROM t"


def test_what_only_databricks_runs_is_listed_in_the_docs_and_the_rest_runs_locally():
    """`sql_files.databricks_only` (skipped by `make databricks-local`, with the reason) matches
    the table of docs/databricks.md; every other statement is in a file the local job graph
    runs (deploy: 00-02, setup: `jobs.TABLES_SQL`, maintenance), so none is silently left out."""
    from cxrlake.spark import jobs

    docs = (REPO / "docs" / "databricks.md").read_text()
    listed = set(re.findall(r"^\| `(\d\d_[a-z_]+\.sql)` \| [^|]+ \| ([^|]+) \|$", docs, re.M))
    found = set()
    run_locally = {"00_catalog.sql", "01_schemas.sql", "02_volumes.sql", *jobs.TABLES_SQL}
    run_locally.add(jobs.MAINTENANCE_SQL)
    for path in FILES:
        statements = _statements(path)
        skipped = sql_files.databricks_only(statements)
        found |= {(path.name, reason) for reason in skipped.values()}
        if len(skipped) < len(statements):
            assert path.name in run_locally, path.name
    assert found == {(name, reason.strip()) for name, reason in listed}
    # what the rules name
    grant = sql_files.databricks_only(["GRANT SELECT ON TABLE c.s.t TO `x`"])
    assert "GRANT" in grant[0]
    assert sql_files.databricks_only(["CREATE TABLE c.s.t (a INT) USING DELTA"]) == {}
