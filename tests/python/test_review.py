"""The review loop against a real lakehouse and a real HTTP server: worklist, verdicts into
gold.prediction_feedback, SCD2 label history, agreement, concurrency, bad input, CSRF, sandbox."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlglot
from deltalake import DeltaTable
from review_support import Running, build_lakehouse, feedback_version

from cxrlake.medallion import metrics
from cxrlake.review import tables, worklist
from cxrlake.review.tables import FEEDBACK, HISTORY

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    return build_lakehouse(shared_data, tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def app(built):
    running = Running(built[0], "dr.alice")
    yield running
    running.close()


def _verdict(pid, kind="agree", **extra):
    return {"prediction_id": pid, "feedback_type": kind, **extra}


def test_worklist_is_ordered_by_need_filters_and_shows_progress(app):
    status, data = app.get("/api/worklist")
    assert status == 200
    items = data["items"]
    assert len(items) == 2 * 4
    needs = [i["need"] for i in items]
    assert needs == sorted(needs, reverse=True)
    for i in items:
        score, reasons = tables.need_score(
            {
                "prediction_probability": i["probability"],
                "threshold": i["threshold"],
                "predicted_label": tables.LABEL_NAMES.index(i["predicted_label"]),
                "true_label": tables.LABEL_NAMES.index(i["folder_label"]),
            }
        )
        if i["out_of_distribution"]:  # unlike the training films: first, with the reason
            score += 5.0
            reasons = [f"out of distribution: {i['ood_reason']}", *reasons]
        assert i["need"] == round(score, 4) and i["reasons"] == reasons
        assert 0 < i["threshold"] < 1 and 0 <= i["quality_score"] <= 1
    assert data["progress"]["total"] == 8
    # the threshold shown is the one that decided the row (gold.decision_threshold)
    from cxrlake.medallion import schemas

    decided = {
        r["prediction_id"]: r["decision_threshold"]
        for r in app.store.lh.read(schemas.PREDICTIONS).to_pylist()
    }
    assert all(i["threshold"] == decided[i["prediction_id"]] for i in items)
    assert sum(i["has_heatmap"] for i in items) >= 1
    status, normal = app.get("/api/worklist?label=NORMAL")
    assert {i["folder_label"] for i in normal["items"]} == {"NORMAL"}
    assert len(normal["items"]) == 4
    status, none = app.get("/api/worklist?split=no_such_split")
    assert status == 200 and none["items"] == []
    version = items[0]["model_version"]
    status, by_model = app.get(f"/api/worklist?model_version={version}")
    assert len(by_model["items"]) == 8
    status, bad = app.get("/api/worklist?reviewed=maybe")
    assert status == 400 and "reviewed must be" in bad["error"]


def test_need_score_ranks_threshold_disagreement_and_positives():
    base = {"threshold": 0.5, "predicted_label": 0, "true_label": 0}
    far = tables.need_score({**base, "prediction_probability": 0.01})[0]
    near = tables.need_score({**base, "prediction_probability": 0.49})[0]
    disagree = tables.need_score({**base, "prediction_probability": 0.01, "true_label": 1})[0]
    positive = tables.need_score(
        {**base, "prediction_probability": 0.99, "predicted_label": 1, "true_label": 1}
    )
    assert near > far and disagree > far
    assert positive[1] == ["positive"] and positive[0] > far


def test_verdicts_are_appended_with_cdf_and_corrections_become_label_history(app):
    store = app.store
    items = app.get("/api/worklist?label=PNEUMONIA")[1]["items"]
    # a film the model and its folder agree on, so the correction changes its label
    target = next(i for i in items if i["predicted_label"] == i["folder_label"])
    pid, image_id = target["prediction_id"], target["image_id"]
    other = "NORMAL" if target["predicted_label"] == "PNEUMONIA" else "PNEUMONIA"
    comment = '<img src=x onerror="alert(1)"> not pneumonia'
    status, body = app.post(
        "/api/feedback",
        _verdict(pid, "disagree", correct_label=other, confidence_level="high", comments=comment),
    )
    assert status == 201, body
    assert body["feedback"]["radiologist_id"] == "dr.alice"
    rows = [r for r in store.feedback() if r["prediction_id"] == pid]
    assert len(rows) == 1 and rows[0]["comments"] == comment
    assert rows[0]["correct_label"] == other and rows[0]["confidence_level"] == "high"
    meta = DeltaTable(store.lh.path(FEEDBACK)).metadata().configuration
    assert meta["delta.enableChangeDataFeed"] == "true"
    assert meta["delta.appendOnly"] == "true"
    history = store.label_history(image_id)
    assert [h["source"] for h in history] == ["folder", "dr.alice"]
    folder, corrected = history
    assert folder["label_name"] == target["folder_label"] and not folder["is_current"]
    assert folder["valid_to"] == corrected["valid_from"]
    assert corrected["is_current"] and corrected["label_name"] == other
    assert corrected["feedback_id"] == rows[0]["feedback_id"]
    # a changed verdict is a new row; the latest counts and the label goes back
    status, _ = app.post(
        "/api/feedback",
        _verdict(pid, "disagree", correct_label=target["folder_label"])
        if target["folder_label"] != target["predicted_label"]
        else _verdict(pid, "agree"),
    )
    assert status == 201
    assert len([r for r in store.feedback() if r["prediction_id"] == pid]) == 2
    history = store.label_history(image_id)
    assert [h["is_current"] for h in history] == [False, False, True]
    assert history[-1]["label_name"] == target["folder_label"]
    assert history[1]["valid_to"] == history[2]["valid_from"]
    case = app.get(f"/api/case/{pid}")[1]
    latest = max(store.feedback(pid), key=lambda r: r["feedback_timestamp"])
    assert case["my_verdict"]["feedback_id"] == latest["feedback_id"]
    assert len(case["verdicts"]) == 2 and case["current_label"] == target["folder_label"]
    # the change data feed holds every insert
    cdf = DeltaTable(store.lh.path(FEEDBACK)).load_cdf(starting_version=0).read_all()
    assert set(cdf.column("_change_type").to_pylist()) == {"insert"}


def test_same_feedback_id_twice_writes_one_row(app):
    pid = app.get("/api/worklist")[1]["items"][-1]["prediction_id"]
    payload = _verdict(pid, "uncertain", feedback_id="ab" * 16)
    assert app.post("/api/feedback", payload)[0] == 201
    version = feedback_version(app.store)
    status, body = app.post("/api/feedback", payload)
    assert status == 200 and body["created"] is False
    assert feedback_version(app.store) == version


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"prediction_id": "f" * 32, "feedback_type": "agree"}, 404, "unknown prediction"),
        ({"feedback_type": "agree"}, 400, "prediction_id is required"),
        (None, 400, "invalid correct_label"),
        (None, 413, "the limit is 2000"),
        ({"prediction_id": "{pid}", "feedback_type": "maybe"}, 400, "feedback_type must be"),
        ({"prediction_id": "{pid}", "feedback_type": "agree", "x": 1}, 400, "unknown field"),
        (
            {"prediction_id": "{pid}", "feedback_type": "agree", "confidence_level": "total"},
            400,
            "confidence_level must be",
        ),
    ],
)
def test_bad_verdicts_are_refused_with_a_message_and_write_nothing(app, payload, status, message):
    pid = app.get("/api/worklist")[1]["items"][0]["prediction_id"]
    if payload is None and status == 400:
        payload = {"prediction_id": pid, "feedback_type": "disagree", "correct_label": "<b>"}
    elif payload is None:
        payload = {"prediction_id": pid, "feedback_type": "uncertain", "comments": "x" * 2001}
    payload = {k: (v.format(pid=pid) if isinstance(v, str) else v) for k, v in payload.items()}
    before = feedback_version(app.store)
    got, body = app.post("/api/feedback", payload)
    assert got == status and message in body["error"]
    assert feedback_version(app.store) == before
    got, body = app.request(
        "POST",
        "/api/feedback",
        raw=b"{not json",
        headers={"Content-Type": "application/json", "X-CSRF-Token": app.token, "Origin": app.url},
    )[:2]
    assert got == 400 and "not valid JSON" in body["error"]
    got, body = app.request(
        "POST",
        "/api/feedback",
        raw=b" " * (64 * 1024 + 1),
        headers={"Content-Type": "application/json", "X-CSRF-Token": app.token, "Origin": app.url},
    )[:2]
    assert got == 413 and "request body over" in body["error"]
    assert feedback_version(app.store) == before


def test_state_changing_requests_cannot_be_made_cross_site(app):
    pid = app.get("/api/worklist")[1]["items"][0]["prediction_id"]
    before = feedback_version(app.store)
    cases = [
        ({"X_CSRF_Token": None}, "CSRF token"),
        ({"X_CSRF_Token": "0" * 64}, "CSRF token"),
        ({"Origin": "http://evil.example"}, "Origin does not match"),
        ({"Origin": None}, "no Origin"),
        ({"Content_Type": "text/plain"}, "Content-Type must be application/json"),
    ]
    for overrides, message in cases:
        status, body = app.post("/api/feedback", _verdict(pid), **overrides)
        assert status in (403, 415) and message in body["error"], overrides
    assert feedback_version(app.store) == before
    # the page carries a strict CSP and the token
    status, html, headers = app.request("GET", "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert app.token.encode() in html and b"{{CSRF_TOKEN}}" not in html
    assert headers["X-Frame-Options"] == "DENY"


def test_two_reviewers_at_once_lose_no_verdict(built, app):
    second = Running(built[0], "dr.bob")
    try:
        items = app.get("/api/worklist")[1]["items"]
        before = len(app.store.feedback())
        errors: list = []

        def review(running, item):
            # alice corrects every case, bob confirms the model: both change the label history
            if running is app:
                other = "NORMAL" if item["predicted_label"] == "PNEUMONIA" else "PNEUMONIA"
                payload = _verdict(item["prediction_id"], "disagree", correct_label=other)
            else:
                payload = _verdict(item["prediction_id"], "agree")
            status, body = running.post("/api/feedback", payload)
            if status != 201:
                errors.append((status, body))

        threads = [
            threading.Thread(target=review, args=(r, item)) for item in items for r in (app, second)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        rows = app.store.feedback()
        assert len(rows) == before + 2 * len(items)
        assert len({r["feedback_id"] for r in rows}) == len(rows)
        bob = [r for r in rows if r["radiologist_id"] == "dr.bob"]
        assert {r["prediction_id"] for r in bob} == {i["prediction_id"] for i in items}
        history = app.store.label_history()
        current = {h["image_id"]: h for h in history if h["is_current"]}
        assert sum(h["is_current"] for h in history) == len(current)
        # per image: the current label is the one of the latest decisive verdict
        for item in items:
            decisive = [
                r
                for r in rows
                if r["image_id"] == item["image_id"] and r["feedback_type"] != "uncertain"
            ]
            latest = max(decisive, key=lambda r: (r["feedback_timestamp"], r["feedback_id"]))
            assert current[item["image_id"]]["label_name"] == latest["correct_label"]
            # the history is a chain: each closed row ends where the next begins
            chain = [h for h in history if h["image_id"] == item["image_id"]]
            for a, b in zip(chain, chain[1:], strict=False):
                assert a["valid_to"] == b["valid_from"]
    finally:
        second.close()


def test_images_are_served_only_from_the_sandbox_roots(built, app, tmp_path):
    lakehouse, source = built
    items = app.get("/api/worklist")[1]["items"]
    image_id = items[0]["image_id"]
    status, data, headers = app.request("GET", f"/api/image/{image_id}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    sha = hashlib.sha256(data).hexdigest()
    row = app.store.lh.read(
        __import__("cxrlake.medallion.schemas", fromlist=["SILVER"]).SILVER,
        ["image_id", "file_path", "content_sha256"],
    ).to_pylist()
    path = next(r for r in row if r["image_id"] == image_id)
    assert sha == path["content_sha256"]
    # the source file becomes a symlink to a file outside the roots: not followed, the bytes
    # kept in bronze are served instead (the documented fallback)
    outside = tmp_path / "outside.jpeg"
    outside.write_bytes(data[:2] + b"\xff not the scored image")
    original = Path(path["file_path"])
    backup = original.with_suffix(".bak")
    original.rename(backup)
    try:
        original.symlink_to(outside)
        status, body, _ = app.request("GET", f"/api/image/{image_id}")
        assert status == 200 and body == data
    finally:
        original.unlink()
        backup.rename(original)
    for bad in ("../../etc/passwd", "%2e%2e%2fetc%2fpasswd", "0" * 32):
        status, body, _ = app.request("GET", f"/api/image/{bad}")
        assert status == 404 and body["error"] == "unknown image"


def test_both_stores_implement_the_review_store_port_with_its_signatures():
    """The server is typed against `ReviewStore`: each adapter has every member of the port,
    with the port's parameters, and neither keeps logic of its own that the service owns."""
    import inspect

    from cxrlake.review.ports import ReviewStore
    from cxrlake.review.store import LocalStore
    from cxrlake.review.warehouse import WarehouseStore

    members = [n for n, v in vars(ReviewStore).items() if callable(v) and not n.startswith("_")] + [
        n
        for c in ReviewStore.__mro__
        if c.__name__ == "ReviewReader"
        for n in vars(c)
        if not n.startswith("_")
    ]
    assert {"predictions", "record_verdict", "write_agreement", "label_history"} <= set(members)
    for store in (LocalStore, WarehouseStore):
        assert isinstance(store.engine, str)
        for name in members:
            want = list(inspect.signature(getattr(ReviewStore, name)).parameters)
            got = list(inspect.signature(getattr(store, name)).parameters)
            assert got == want, (store.__name__, name)
        assert not hasattr(store, "compute_agreement"), store.__name__


def test_read_sandboxed_judges_symlinks_and_dotdot_by_their_target(tmp_path):
    from cxrlake.review.images import read_sandboxed

    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpeg").write_bytes(b"\xff\xd8\xffok")
    (tmp_path / "secret").write_text("secret")
    (root / "link").symlink_to(tmp_path / "secret")
    assert read_sandboxed(str(root / "a.jpeg"), [str(root)]) == b"\xff\xd8\xffok"
    for path in (root / "link", root / ".." / "secret", tmp_path / "rootx"):
        with pytest.raises(tables.ReviewError) as e:
            read_sandboxed(str(path), [str(root)])
        assert e.value.status == 403
    os.mkfifo(root / "fifo")
    with pytest.raises(tables.ReviewError) as e:
        read_sandboxed(str(root / "fifo"), [str(root)])
    assert e.value.status == 415


def test_label_history_changes_are_idempotent_and_replay_unapplied_verdicts():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    fb = [
        {
            "feedback_id": "1" * 32,
            "image_id": "img",
            "radiologist_id": "r1",
            "feedback_type": "disagree",
            "correct_label": "PNEUMONIA",
            "feedback_timestamp": t0 + dt.timedelta(hours=1),
        },
        {
            "feedback_id": "2" * 32,
            "image_id": "img",
            "radiologist_id": "r2",
            "feedback_type": "uncertain",
            "correct_label": None,
            "feedback_timestamp": t0 + dt.timedelta(hours=2),
        },
    ]
    change = tables.label_history_changes([], {"img": 0, "unlabelled": None}, fb, t0)
    assert change.close == []
    assert [(r["label_name"], r["source"], r["is_current"]) for r in change.insert] == [
        ("NORMAL", "folder", False),
        ("PNEUMONIA", "r1", True),
    ]
    again = tables.label_history_changes(change.insert, {"img": 0}, fb, t0)
    assert not again


def test_a_confirming_verdict_before_a_correction_is_not_replayed_later():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

    def verdict(n, who, kind, label, hours):
        return {
            "feedback_id": str(n) * 32,
            "image_id": "img",
            "radiologist_id": who,
            "feedback_type": kind,
            "correct_label": label,
            "feedback_timestamp": t0 + dt.timedelta(hours=hours),
        }

    # bob confirms the folder label first (no history row of its own), alice corrects later
    fb = [verdict(1, "bob", "agree", "NORMAL", 1), verdict(2, "alice", "disagree", "PNEUMONIA", 2)]
    first = tables.label_history_changes([], {"img": 0}, fb, t0)
    assert [r["label_name"] for r in first.insert] == ["NORMAL", "PNEUMONIA"]
    assert not tables.label_history_changes(first.insert, {"img": 0}, fb, t0)


def test_cohen_kappa_and_agreement_match_sklearn():
    from sklearn.metrics import cohen_kappa_score

    a = [1, 1, 0, 0, 1, 0, 1, 1]
    b = [1, 0, 0, 0, 1, 1, 1, 1]
    assert metrics.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert metrics.cohen_kappa([1, 1], [1, 1]) is None
    assert metrics.cohen_kappa([], []) is None


def test_agreement_figures_are_computed_and_written_once(app):
    items = app.get("/api/worklist")[1]["items"]
    agree, disagree = items[0], items[1]
    other = "NORMAL" if disagree["predicted_label"] == "PNEUMONIA" else "PNEUMONIA"
    assert app.post("/api/feedback", _verdict(agree["prediction_id"]))[0] == 201
    status, _ = app.post(
        "/api/feedback", _verdict(disagree["prediction_id"], "disagree", correct_label=other)
    )
    assert status == 201
    status, body = app.get("/api/agreement")
    assert status == 200 and body["rows"]
    row = body["rows"][0]
    # expected figures straight from the rows: the latest verdict per (prediction, reviewer)
    predicted = {i["prediction_id"]: i["predicted_label"] for i in items}
    latest = {}
    for r in sorted(
        app.store.feedback(), key=lambda r: (r["feedback_timestamp"], r["feedback_id"])
    ):
        latest[(r["prediction_id"], r["radiologist_id"])] = r
    decisive = [r for r in latest.values() if r["correct_label"] is not None]
    same = [r for r in decisive if r["correct_label"] == predicted[r["prediction_id"]]]
    assert row["agreement_rate"] == pytest.approx(len(same) / len(decisive))
    assert row["verdicts"] == len(latest)
    per = json.loads(row["per_reviewer"])
    for who in {r["radiologist_id"] for r in latest.values()}:
        mine = [r for r in latest.values() if r["radiologist_id"] == who]
        for kind in ("agree", "disagree", "uncertain"):
            assert per[who][kind] == sum(r["feedback_type"] == kind for r in mine), (who, kind)
    assert per["dr.alice"]["agree"] >= 1 and per["dr.alice"]["disagree"] >= 1
    assert row["labels_corrected"] >= 1
    status, first = app.post("/api/agreement", {})
    assert status == 200 and first["rows_written"] >= 1
    status, second = app.post("/api/agreement", {})
    assert second["rows_written"] == 0


def test_cli_starts_one_server_and_prints_the_address(built):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrlake.cli",
            "review",
            "--lakehouse",
            str(built[0]),
            "--port",
            "0",
            "--reviewer",
            "dr.cli",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        _check_cli(proc)
    missing = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", "review", "--lakehouse", str(built[0] / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "pipeline run" in missing.stderr


def _check_cli(proc):
    try:
        url = None
        for _ in range(5):
            line = proc.stdout.readline()
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, proc.stderr.read() if proc.poll() is not None else "no address printed"
        import urllib.request

        with urllib.request.urlopen(url + "api/session", timeout=30) as resp:
            assert json.loads(resp.read())["reviewer"] == "dr.cli"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_review_ddl_matches_the_table_schemas():
    from cxrlake.spark import sql_files
    from cxrlake.spark.schemas import spark_type

    path = REPO / "sql" / "13_review_tables.sql"
    created = {}
    params = {"catalog": "healthcare_catalog_dev", "silver_schema": "s1", "gold_schema": "g1"}
    for statement in sql_files.rendered_statements(path, params):
        parsed = sqlglot.parse_one(statement, read="databricks")
        table = parsed.this.this
        schema = {"s1": "silver", "g1": "gold"}[table.db]
        created[f"{schema}.{table.name}"] = parsed
    assert set(created) == {t.qualified_name for t in tables.REVIEW_TABLES}
    for spec in tables.REVIEW_TABLES:
        columns = [
            (
                c.name,
                c.args["kind"].sql("databricks").upper(),
                any(isinstance(k.kind, sqlglot.exp.NotNullColumnConstraint) for k in c.constraints),
            )
            for c in created[spec.qualified_name].this.expressions
        ]
        expected = [
            (f.name, spark_type(f.type).simpleString().upper(), not f.nullable)
            for f in spec.arrow_schema
        ]
        assert columns == expected, spec.qualified_name
        assert "'delta.enableChangeDataFeed'='true'" in created[spec.qualified_name].sql(
            "databricks"
        )


def test_warehouse_statements_parse_and_bind_values_as_parameters():

    import pyarrow as pa

    from cxrlake.review.warehouse import WarehouseNames, values_relation, where_clause
    from cxrlake.spark.sql_files import SqlParameterError

    names = WarehouseNames("healthcare_catalog_dev", "dev_a_bronze", "dev_a_silver", "dev_a_gold")
    assert names.feedback == "healthcare_catalog_dev.dev_a_gold.prediction_feedback"
    row = tables.feedback_row(
        {
            "feedback_id": "a" * 32,
            "prediction_id": "p'; DROP TABLE x; --",
            "image_id": "i",
            "feedback_type": "agree",
            "correct_label": "NORMAL",
            "confidence_level": "high",
            "comments": None,
        },
        "ana",
        dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    )
    rows, params = values_relation(pa.Table.from_pylist([row], schema=FEEDBACK.arrow_schema), "s")
    where, flt = where_clause({"image_id": ["a", "b"], "feedback_id": "c"})
    sql = f"SELECT * FROM {rows}{where}"
    assert len(sqlglot.parse(sql, read="databricks")) == 1
    assert "DROP" not in sql and params["v0_1"] == row["prediction_id"]
    assert "CAST(:v0_8 AS TIMESTAMP)" in sql and params["v0_8"] == "2026-01-01T00:00:00+00:00"
    assert flt == {"f0_0": "a", "f0_1": "b", "f1": "c"}
    with pytest.raises(SqlParameterError):
        WarehouseNames("healthcare_catalog_dev; DROP TABLE x")


def _correct_one(app):
    """Post a correction on a case not relabelled yet: one whose prediction, folder and current
    labels agree when there is one left (earlier tests of the module correct some, and how many
    films the model gets right depends on the model), else one whose folder and current labels
    agree. Either way the correction differs from the current label, so it writes history."""
    items = app.get("/api/worklist")[1]["items"]
    unchanged = [i for i in items if i["folder_label"] == i["current_label"]]
    agreeing = [i for i in unchanged if i["predicted_label"] == i["folder_label"]]
    item = (agreeing or unchanged)[0]
    other = "NORMAL" if item["folder_label"] == "PNEUMONIA" else "PNEUMONIA"
    status, _ = app.post(
        "/api/feedback", _verdict(item["prediction_id"], "disagree", correct_label=other)
    )
    assert status == 201
    return item, other


def test_training_uses_current_labels_and_counts_the_differences(built, app):
    from cxrlake.medallion.identity import identify
    from cxrlake.review.labels import apply_current_labels
    from cxrlake.training.data import list_labelled_images

    lakehouse, source = built
    item, other = _correct_one(app)
    records = list_labelled_images(source)
    relabelled, changed = apply_current_labels(records, lakehouse)
    current = {h["image_id"]: h for h in app.store.label_history() if h["is_current"]}
    differ = [r for r in records if current[identify(r.path).image_id]["label"] != r.label]
    assert changed == len(differ) >= 1
    by_path = {r.path: r.label for r in relabelled}
    target = next(r for r in records if identify(r.path).image_id == item["image_id"])
    assert by_path[target.path] == tables.LABEL_NAMES.index(other) != target.label
    assert [r.path for r in relabelled] == [r.path for r in records]


def test_html_report_shows_the_agreement(built, app):
    from cxrlake.lakehouse.report import build_report

    pid = app.get("/api/worklist")[1]["items"][0]["prediction_id"]
    assert app.post("/api/feedback", _verdict(pid))[0] == 201
    text = build_report(built[0])
    section = text.split("id='review'", 1)[1].split("<h2", 1)[0]
    assert "Radiologist review" in text and "dr.alice" in section
    row = app.store.current_agreement()[0]
    assert f"{row['agreement_rate']:.3f}" in section


def test_train_labels_from_passes_the_corrections_and_says_how_many(built, app, capsys):
    from cxrlake.cli import build_parser
    from cxrlake.cli.train import current_labels, run

    lakehouse, source = built
    _correct_one(app)
    args = build_parser().parse_args(
        ["train", "--data", str(source), "--labels-from", str(lakehouse)]
    )
    assert args.labels_from == str(lakehouse)
    assert args.handler is run  # `cxrlake train` declares --labels-from and reads it itself
    seen = current_labels(args.data, args.labels_from)
    out = capsys.readouterr().out
    m = re.search(r"(\d+) of (\d+) differ from the folder labels", out)
    assert m and int(m.group(1)) == len(seen) >= 1 and int(m.group(2)) == 8
    assert all(Path(p).is_file() for p in seen)


def test_databricks_app_resource_matches_the_app_folder():
    import ast

    import yaml

    resource = yaml.safe_load((REPO / "bundle" / "resources" / "review.app.yml").read_text())
    app = resource["resources"]["apps"]["review"]
    folder = (REPO / "bundle" / "resources" / app["source_code_path"]).resolve()
    assert folder == REPO / "bundle" / "apps" / "review"
    assert {"app.py", "app.yaml", "requirements.txt"} <= {p.name for p in folder.iterdir()}
    names = {r["name"] for r in app["resources"]}
    bound = {e["value_from"] for e in app["config"]["env"] if "value_from" in e}
    local = yaml.safe_load((folder / "app.yaml").read_text())
    assert bound <= names and {e["valueFrom"] for e in local["env"]} <= names
    assert app["config"]["command"] == local["command"] == ["python", "app.py"]
    env = {e["name"] for e in app["config"]["env"]}
    assert {"DATABRICKS_WAREHOUSE_ID", "CXRLAKE_CATALOG", "CXRLAKE_GOLD_SCHEMA"} <= env
    # The tables exist only after the setup job, so the app's table rights are granted by the
    # setup job's grant_review_app task (sql/14_review_app_grants.sql), not as app resources.
    securables = {
        r["uc_securable"]["securable_type"] for r in app["resources"] if "uc_securable" in r
    }
    assert "TABLE" not in securables
    grants = (REPO / "sql" / "14_review_app_grants.sql").read_text()
    for spec in tables.REVIEW_TABLES:
        assert f".{spec.name} TO `${{app_principal}}`" in grants, spec.name
        line = next(g for g in grants.splitlines() if f".{spec.name} TO" in g)
        assert line.startswith("GRANT SELECT, MODIFY ON TABLE"), spec.name
    tree = ast.parse((folder / "app.py").read_text())
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("cxrlake.review.server", "make_server") in imported
    assert ("cxrlake.review.warehouse", "WarehouseStore") in imported
    requirements = (folder / "requirements.txt").read_text()
    assert "databricks-sql-connector" in requirements


def test_reviewer_identity_from_databricks_apps_headers_only_in_that_mode(built, app):
    import urllib.error
    import urllib.request

    from cxrlake.review.server import make_server

    server = make_server(app.store, "127.0.0.1", 0, trust_proxy_headers=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:

        def session(headers):
            req = urllib.request.Request(server.url + "api/session", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, body = session({"X-Forwarded-Email": "ana@hospital.example"})
        assert status == 200 and body["reviewer"] == "ana@hospital.example"
        status, body = session({"X-Forwarded-Preferred-Username": "ana"})
        assert body["reviewer"] == "ana"
        status, body = session({})
        assert status == 401 and "no reviewer identity" in body["error"]
    finally:
        server.shutdown()
        server.server_close()
    # locally the headers are ignored: the reviewer stays the configured one
    status, body, _ = app.request(
        "GET", "/api/session", headers={"X-Forwarded-Email": "mallory@evil.example"}
    )
    assert body["reviewer"] == "dr.alice"


def test_maintain_compacts_the_review_tables_and_keeps_every_verdict(built, app):
    from cxrlake.lakehouse.maintain import maintain

    before = sorted(r["feedback_id"] for r in app.store.feedback())
    history = len(app.store.label_history())
    assert len(before) > 1
    results = {r["table"]: r for r in maintain(built[0], zorder=False)}
    done = results[FEEDBACK.qualified_name]
    assert done["files_after"] <= done["files_before"]
    assert HISTORY.qualified_name in results
    assert sorted(r["feedback_id"] for r in app.store.feedback()) == before
    assert len(app.store.label_history()) == history
    assert (
        DeltaTable(app.store.lh.path(FEEDBACK)).metadata().configuration["delta.appendOnly"]
        == "true"
    )


class _DuckCursor:
    """DB-API cursor of the SQL warehouse store over DuckDB: named markers ``:x`` become ``$x``
    (DuckDB's spelling); the statements themselves run unchanged."""

    def __init__(self, con):
        self.cur = con.cursor()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cur.close()

    def execute(self, sql, params):
        self.cur.execute(re.sub(r"(?<![:\w]):([a-z_][a-z0-9_]*)", r"$\1", sql), params or None)

    @property
    def description(self):
        return self.cur.description

    def fetchall(self):
        return self.cur.fetchall()


class _DuckConnection:
    def __init__(self, con):
        self.con = con

    def cursor(self):
        return _DuckCursor(self.con)


def test_warehouse_store_runs_its_sql_and_the_same_rules(built, app):
    """The Databricks store's statements on a real SQL engine (DuckDB) holding a copy of the
    lakehouse tables: same worklist as the local store, verdicts, SCD2 history, images."""
    import duckdb

    from cxrlake.medallion import schemas
    from cxrlake.review.warehouse import WarehouseNames, WarehouseStore

    con = duckdb.connect()
    con.execute("ATTACH ':memory:' AS healthcare_catalog_dev")
    for schema in ("bronze", "silver", "gold"):
        con.execute(f"CREATE SCHEMA healthcare_catalog_dev.{schema}")
    specs = [schemas.BRONZE, schemas.SILVER, schemas.PREDICTIONS, schemas.PERFORMANCE]
    for spec in specs + list(tables.REVIEW_TABLES):
        data = app.store.lh.read(spec) if spec in specs else spec.arrow_schema.empty_table()
        con.register("src", data)
        con.execute(
            f"CREATE TABLE healthcare_catalog_dev.{spec.qualified_name} AS SELECT * FROM src"
        )
        con.unregister("src")
    store = WarehouseStore(
        WarehouseNames("healthcare_catalog_dev"), connect=lambda: _DuckConnection(con)
    )
    assert store.sync_history() == 8
    local = worklist.build_worklist(app.store.predictions(), [], {}, "x")["items"]
    remote = worklist.build_worklist(store.predictions(), [], {}, "x")["items"]
    keys = ["prediction_id", "need", "threshold", "quality_score", "has_heatmap"]
    assert [[i[k] for k in keys] for i in remote] == [[i[k] for k in keys] for i in local]

    # a film the model and its folder agree on, so the correction changes its label
    item = next(i for i in remote if i["predicted_label"] == i["folder_label"])
    other = "NORMAL" if item["predicted_label"] == "PNEUMONIA" else "PNEUMONIA"
    payload = _verdict(item["prediction_id"], "disagree", correct_label=other)
    payload["feedback_id"] = "c" * 32
    row, created = store.record_verdict(payload, "ana@hospital.example")
    assert created and store.record_verdict(payload, "ana@hospital.example")[1] is False
    assert len(store.feedback()) == 1
    history = store.label_history(item["image_id"])
    assert [(h["source"], h["is_current"]) for h in history] == [
        ("folder", False),
        ("ana@hospital.example", True),
    ]
    assert history[0]["valid_to"] == history[1]["valid_from"]
    with pytest.raises(tables.ReviewError) as e:
        store.record_verdict(_verdict("f" * 32), "ana@hospital.example")
    assert e.value.status == 404 and len(store.feedback()) == 1
    data, kind = store.image(item["image_id"])
    assert kind == "image/jpeg" and data == app.store.image(item["image_id"])[0]
    assert store.write_agreement() == 1
    assert store.agreement()[0]["agreement_rate"] == 0.0


def test_warehouse_catalog_runs_a_rule_and_deletes_like_the_local_catalog(app):
    """`WarehouseCatalog` (the catalog port over a SQL warehouse) on DuckDB: a rule's SQL over
    Arrow relations sent as parameters answers as `LocalCatalog.query` does; a delete removes
    the rows its filter selects and runs no DELETE when it selects none."""
    import duckdb
    import pyarrow as pa

    from cxrlake.catalog import TableRef
    from cxrlake.lakehouse.catalog import LocalCatalog
    from cxrlake.medallion import rules, schemas
    from cxrlake.review.warehouse import WarehouseCatalog, WarehouseNames

    local = LocalCatalog(app.store.lh)
    con = duckdb.connect()
    con.execute("ATTACH ':memory:' AS healthcare_catalog_dev")
    con.execute("CREATE SCHEMA healthcare_catalog_dev.silver")
    con.register("src", local.read(schemas.SILVER, ["image_id", "label", "content_sha256"]))
    con.execute("CREATE TABLE healthcare_catalog_dev.silver.xray_metadata AS SELECT * FROM src")
    catalog = WarehouseCatalog(
        WarehouseNames("healthcare_catalog_dev"), connect=lambda: _DuckConnection(con)
    )
    bronze = local.read(schemas.BRONZE, list(rules.STATE_COLUMNS["bronze"]))
    moved = bronze.set_column(
        2, "file_path", pa.array(["/moved/" + p for p in bronze["file_path"].to_pylist()])
    ).slice(0, 2)
    relations = {"incoming": moved, "bronze": bronze}
    columns = ["image_id", "file_path"]
    got = catalog.query(rules.BRONZE_STAT_UPDATES, relations).select(columns).to_pylist()
    want = local.query(rules.BRONZE_STAT_UPDATES, relations).select(columns).to_pylist()
    assert sorted(got, key=repr) == sorted(want, key=repr) and len(got) == 2
    # a TableRef relation is read where the rule runs: in the warehouse, or through delta-rs
    ref = {"silver": TableRef(schemas.SILVER, ("image_id", "label"))}
    sql = "SELECT label, count(*) AS n FROM silver GROUP BY label ORDER BY label"
    counted = catalog.query(sql, ref).to_pylist()
    assert counted == local.query(sql, ref).to_pylist() and sum(r["n"] for r in counted) > 2
    ids = catalog.read(schemas.SILVER, ["image_id"]).column(0).to_pylist()
    assert catalog.delete(schemas.SILVER, {"image_id": ids[:2]}, operation="t") == 2
    assert catalog.delete(schemas.SILVER, {"image_id": []}, operation="t") == 0
    assert catalog.delete(schemas.SILVER, {"image_id": "no-such-image"}, operation="t") == 0
    assert sorted(catalog.read(schemas.SILVER, ["image_id"]).column(0).to_pylist()) == sorted(
        ids[2:]
    )


def test_spark_engine_computes_the_same_agreement_figures(app, tmp_path):
    """`cxrlake.metrics_service.review_agreement` over a `SparkCatalog` (what the gold job
    appends) on local PySpark over the same tables gives the rows the review app computes (one
    rule, both engines)."""
    from pyspark.sql import SparkSession

    from cxrlake import metrics_service
    from cxrlake.medallion import schemas
    from cxrlake.spark.catalog import SparkCatalog
    from cxrlake.spark.deployment import Deployment
    from cxrlake.spark.frames import arrow_frame

    _correct_one(app)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("cxrlake-review-tests")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", str(tmp_path / "warehouse"))
        .getOrCreate()
    )
    try:
        names = Deployment(
            "spark_catalog", bronze="rv_b", silver="rv_s", gold="rv_g", models="rv_m"
        )
        for spec in (schemas.PREDICTIONS, schemas.SILVER, FEEDBACK, HISTORY):
            data = app.store.lh.read(spec)
            if "heatmap" in data.schema.names:
                data = data.drop_columns(["heatmap"])
            spark.sql(
                f"CREATE DATABASE IF NOT EXISTS {names.catalog}.{names.schema(spec.schema_name)}"
            )
            # parquet tables here (no Delta in this session), Delta on Databricks
            arrow_frame(spark, data).write.saveAsTable(names.table(spec.qualified_name))
        when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        got = metrics_service.review_agreement(SparkCatalog(spark, names), when)
        want = app.store.current_agreement()
        assert len(got) == len(want) == 1
        for key in want[0]:
            if key != "evaluated_at":
                assert got[0][key] == pytest.approx(want[0][key]), key
        assert want[0]["labels_corrected"] >= 1
    finally:
        spark.stop()


def test_training_split_uses_the_label_overrides(built):
    from cxrlake.training.config import TrainConfig
    from cxrlake.training.data import list_labelled_images
    from cxrlake.training.train import load_split

    _, source = built
    records = list_labelled_images(source)
    flipped = {records[0].path: 1 - records[0].label}
    cfg = TrainConfig(data=str(source), run_dir="unused", label_overrides=flipped)
    train, val = load_split(cfg)
    labels = {r.path: r.label for r in [*train, *val]}
    assert len(labels) == len(records)
    assert labels[records[0].path] == flipped[records[0].path]
    assert all(labels[r.path] == r.label for r in records[1:])


def test_a_label_given_on_earlier_bytes_is_marked_and_the_image_comes_back(shared_data, tmp_path):
    from cxrlake.lakehouse.pipeline import run_pipeline
    from cxrlake.review.labels import current_radiologist_labels

    lakehouse, source = build_lakehouse(shared_data, tmp_path)
    running = Running(lakehouse, "dr.alice")
    try:
        item, other = _correct_one(running)
        judged = running.store.prediction(item["prediction_id"])["content_sha256"]
        (label,) = [h for h in running.store.label_history(item["image_id"]) if h["is_current"]]
        assert label["source"] == "dr.alice" and label["content_sha256"] == judged
        assert current_radiologist_labels(lakehouse) == {item["image_id"]: label["label"]}
        # the film is replaced by other bytes and scored again
        path = next(
            p
            for p in source.rglob("*.jpeg")
            if hashlib.sha256(p.read_bytes()).hexdigest() == judged
        )
        replacement = sorted((shared_data / "chest_xray_fullres" / "NORMAL").glob("*.jpeg"))[-1]
        path.write_bytes(replacement.read_bytes())
        os.utime(path, (2_000_000_000, 2_000_000_000))
        run_pipeline([str(source)], str(lakehouse), progress=False)
        items = running.get("/api/worklist")[1]["items"]
        back = next(i for i in items if i["image_id"] == item["image_id"])
        assert back["prediction_id"] != item["prediction_id"]
        assert back["current_label_on_earlier_bytes"] is True
        assert "label given on earlier bytes" in back["reasons"]
        assert items[0]["image_id"] == item["image_id"] and back["verdicts"] == 0
        assert not any(i["current_label_on_earlier_bytes"] for i in items[1:])
        case = running.get("/api/case/" + back["prediction_id"])[1]
        assert case["current_label_on_earlier_bytes"] is True
        assert "earlier bytes" in running.request("GET", "/static/app.js")[1].decode()
        # the history still says which bytes the label judged; training no longer uses it
        (label,) = [h for h in running.store.label_history(item["image_id"]) if h["is_current"]]
        assert label["content_sha256"] == judged
        assert current_radiologist_labels(lakehouse) == {}
    finally:
        running.close()
