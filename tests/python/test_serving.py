"""cxrlake serve over real HTTP on loopback with real images: the three payload forms, bad rows,
400 / 413 / 503, Host headers, concurrency and micro-batching, the inference table, the
champion/challenger comparison, promote, and `mlflow models serve` of the logged pyfunc."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

import cxrlake
from cxrlake.cli import main as cli_main
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import schemas
from cxrlake.medallion import serving as serving_tables
from cxrlake.serving.batcher import MicroBatcher, QueueFull
from cxrlake.serving.models import Router, ServedModel
from cxrlake.serving.protocol import warmup_png
from cxrlake.serving.server import ScoringApp, ScoringServer

PREDICT_FIELDS = (
    "probability",
    "predicted_label",
    "label_name",
    "model_name",
    "model_version",
    "error",
)


# ------------------------------------------------------------------ helpers
def _request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        data = resp.read()
        try:
            body = json.loads(data) if data.strip() else {}
        except ValueError:  # mlflow's /ping answers a bare newline
            body = {"text": data.decode("utf-8", "replace")}
        return resp.status, body, dict(resp.getheaders())
    finally:
        conn.close()


def _post(url: str, payload: object, path: str = "/invocations", **headers: str):
    return _request(url, "POST", path, json.dumps(payload).encode(), headers)


def _read_all(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


class Served:
    """A `cxrlake serve` subprocess; `stop` sends SIGTERM and returns its stderr."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxrlake.cli", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        found = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    found.set()
            found.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        assert found.wait(60), "cxrlake serve printed no address"
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", "".join(self.lines))
        assert m, "".join(self.lines)
        self.url = m.group(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body, _ = _request(self.url, "GET", "/ping")
            if status == 200:
                return
            assert status == 503 and body == {"status": "loading"}, (status, body)
            time.sleep(0.05)
        raise AssertionError("cxrlake serve did not become ready: " + "".join(self.lines))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, "".join(self.lines)
        self._drain.join(timeout=10)
        self.proc.stderr.close()
        return "".join(self.lines)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def films(fullres_paths) -> list[str]:
    """Six full-resolution films, three of each label."""
    return fullres_paths[:3] + fullres_paths[-3:]


@pytest.fixture(scope="module")
def cli_predictions(films) -> dict[str, dict]:
    """`cxrlake predict` on the films (the reference every answer must equal)."""
    run = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", "predict", "--no-progress", *films],
        capture_output=True,
        text=True,
        check=True,
    )
    records = [json.loads(line) for line in run.stdout.splitlines()]
    return {r["path"]: r for r in records}


@pytest.fixture(scope="module")
def challenger_path(tmp_path_factory) -> str:
    from make_tiny_model import write_model

    path = tmp_path_factory.mktemp("challenger") / "challenger.onnx"
    write_model(path, size=64, name="cxrlake-challenger", version="2.0.0", threshold=0.5)
    return str(path)


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving") / "lakehouse"


@pytest.fixture(scope="module")
def mlflow_served(tmp_path_factory):
    """`mlflow models serve --env-manager local` of the pyfunc `cxrlake.serving.pyfunc.save_model`
    writes, started at the first test of the module (it takes seconds to import MLflow twice)
    and run in its own process group."""
    pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a stand-in wheel file: the saved model must carry it as its code and pip requirement
    # (`--env-manager local` installs nothing, so its contents do not matter here)
    wheel = folder / "cxrlake-0.1.0-cp310-abi3-manylinux_2_17_x86_64.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    save = (
        "from cxrlake.serving import pyfunc; "
        f"pyfunc.save_model({str(folder / 'pyfunc')!r}, wheel={str(wheel)!r})"
    )
    serve = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        str(folder / "pyfunc"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--env-manager",
        "local",
        "-w",
        "1",
    ]
    script = f"{shlex.quote(sys.executable)} -c {shlex.quote(save)} && exec {shlex.join(serve)}"
    log = open(folder / "mlflow-serve.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        ["sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
        env=dict(
            os.environ,
            MLFLOW_TRACKING_URI=f"file://{folder}/mlruns",
            # mlflow starts `uvicorn` by name: the venv's bin first
            PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        ),
    )
    yield proc, f"http://127.0.0.1:{port}", folder
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def served(lakehouse, challenger_path, mlflow_served):
    """Champion (the shipped model) and challenger at 0.5, logging to the lakehouse; the log is
    committed at shutdown only (flush interval longer than the tests)."""
    server = Served(
        "--lakehouse",
        str(lakehouse),
        "--challenger",
        challenger_path,
        "--challenger-share",
        "0.5",
        "--log-flush-seconds",
        "600",
    )
    yield server
    if server.proc.poll() is None:
        server.stop()


def _champion(url: str, payload: object):
    return _post(url, payload, "/served-models/champion/invocations")


def _expected(cli_predictions, path):
    record = cli_predictions[path]
    return {k: record[k] for k in ("probability", "predicted_label", "label_name", "error")}


# ------------------------------------------------------------------ protocol
@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "inputs"])
def test_every_payload_form_answers_the_values_of_cxrlake_predict(
    served, films, cli_predictions, form
):
    contents = [_b64(p) for p in films]
    payload = {
        "dataframe_split": {
            "dataframe_split": {"columns": ["content"], "data": [[c] for c in contents]}
        },
        "dataframe_records": {"dataframe_records": [{"content": c} for c in contents]},
        "inputs": {"inputs": {"content": contents}},
    }[form]
    status, body, headers = _champion(served.url, payload)
    assert status == 200, body
    assert headers["X-Served-Model-Name"] == "champion"
    rows = body["predictions"]
    assert len(rows) == len(films)
    model = cxrlake.Model()
    for path, row in zip(films, rows, strict=True):
        assert set(PREDICT_FIELDS) <= set(row)
        assert {k: row[k] for k in ("probability", "predicted_label", "label_name", "error")} == (
            _expected(cli_predictions, path)
        )
        assert (row["model_name"], row["model_version"]) == (model.name, model.version)


def test_bad_rows_get_their_error_and_the_other_rows_are_scored(served, films, cli_predictions):
    rows_in = [
        _b64(films[0]),
        "not base64 at all!",
        base64.b64encode(b"hello").decode(),
        None,
        "\ud800",  # a lone surrogate: still just a bad row
        _b64(films[-1]),
    ]
    status, body, _ = _champion(served.url, {"inputs": {"content": rows_in}})
    assert status == 200, body
    rows = body["predictions"]
    assert [r["error"] for r in rows[1:5]] == [
        "content is not valid base64",
        "not an image (unknown format)",
        "content is not a base64 string (got null)",
        "content is not valid base64",
    ]
    for bad in rows[1:5]:
        assert bad["probability"] is None and bad["predicted_label"] is None
        assert bad["model_name"] == cxrlake.Model().name
    assert {k: rows[0][k] for k in ("probability", "error")} == {
        k: cli_predictions[films[0]][k] for k in ("probability", "error")
    }
    assert rows[5]["probability"] == cli_predictions[films[-1]]["probability"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": {"content": ["abc"]', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"dataframe_split": {"columns": ["image"], "data": [["x"]]}}', 'no "content" column'),
        (b'{"inputs": {"content": []}, "dataframe_records": []}', "exactly one of"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"inputs": {"content": [NaN]}}', "NaN is not JSON"),
    ],
)
def test_a_bad_request_is_400_with_a_message(served, body, message):
    status, answer, _ = _request(served.url, "POST", "/invocations", body)
    assert status == 400
    assert answer["error_code"] == "BAD_REQUEST" and message in answer["message"]


def test_a_body_over_16_mib_is_413_without_being_read(served):
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: 16777217\r\n\r\n{"
        )
        answer = _read_all(sock)
    assert answer.startswith("HTTP/1.1 413")
    assert "16 MiB" in answer


@pytest.mark.parametrize("length", [b"+2", b"0x2", b"1_0", b"-1", b"2, 2"])
def test_a_content_length_that_is_not_one_decimal_number_is_411(served, length):
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
            + length
            + b"\r\n\r\n{}"
        )
        answer = _read_all(sock)
    assert answer.startswith("HTTP/1.1 411"), answer


def test_only_loopback_and_allowed_host_headers_are_answered(served):
    status, body, _ = _request(served.url, "GET", "/ping", headers={"Host": "evil.example"})
    assert status == 400 and "evil.example" in body["message"]
    for host in ("localhost:8080", "127.0.0.1", "[::1]:1"):
        assert _request(served.url, "GET", "/ping", headers={"Host": host})[0] == 200


def test_version_names_the_served_entities(served, challenger_path):
    status, body, _ = _request(served.url, "GET", "/version")
    assert status == 200 and body["challenger_share"] == 0.5
    assert [e["served_entity_name"] for e in body["served_entities"]] == ["champion", "challenger"]
    assert body["served_entities"][1]["model_version"] == "2.0.0"


def test_health_answers_while_the_model_loads_and_after():
    """In process, so the loading state is held as long as the test needs it."""
    app = ScoringApp(set())
    server = ScoringServer(("127.0.0.1", 0), app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = server.url()
    try:
        for route in ("/ping", "/health"):
            assert _request(url, "GET", route)[:2] == (503, {"status": "loading"})
        status, body, headers = _post(url, {"inputs": {"content": []}})
        assert status == 503 and body["message"] == "model loading"
        assert headers["Retry-After"] == "1"
        model = cxrlake.Model()
        app.ready(Router(ServedModel("champion", model, MicroBatcher(model))))
        for route in ("/ping", "/health"):
            assert _request(url, "GET", route)[:2] == (200, {"status": "ready"})
    finally:
        server.shutdown()
        server.server_close()
        app.router.close()


# ------------------------------------------------------------------ load
def test_concurrent_requests_are_batched_into_one_core_call(films, cli_predictions):
    """Requests that arrive while the core is busy (here: before the worker starts) are scored
    together: twelve one-film requests from twelve threads, one `predict` call."""
    model = cxrlake.Model()
    batcher = MicroBatcher(model, max_batch=16, start=False)
    images = [Path(p).read_bytes() for p in films] * 2
    with ThreadPoolExecutor(len(images)) as pool:
        futures = list(pool.map(lambda image: batcher.submit([image]), images))
    batcher.start()
    results = [f.result() for f in futures]
    batcher.close()
    assert (batcher.batches, batcher.batched_images) == (1, len(images))
    for path, scored in zip(films * 2, results, strict=True):
        assert scored.rows[0]["probability"] == cli_predictions[path]["probability"]


def test_the_queue_is_bounded_and_a_full_queue_refuses():
    model = cxrlake.Model()
    batcher = MicroBatcher(model, max_queued_images=2, start=False)
    image = warmup_png()
    first, second = batcher.submit([image]), batcher.submit([image])
    with pytest.raises(QueueFull):
        batcher.submit([image])
    batcher.start()
    assert first.result().rows[0]["error"] is None and second.result().rows[0]["error"] is None
    batcher.submit([image]).result()  # room again
    batcher.close()


def test_too_many_requests_in_flight_get_503(films):
    with_limit = Served("--max-inflight", "1", "--max-inflight-mib", "1")
    host, port = with_limit.url.removeprefix("http://").split(":")
    try:
        # a request whose body never finishes holds the one slot
        with socket.create_connection((host, int(port)), timeout=30) as held:
            held.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(0.2)
            status, body, headers = _post(with_limit.url, {"inputs": {"content": []}})
            assert status == 503 and headers["Retry-After"] == "1"
            assert "too many requests" in body["message"]
        status, _, _ = _post(with_limit.url, {"inputs": {"content": [_b64(films[0])]}})
        assert status == 200
        # a body larger than the byte budget (1 MiB) is refused whatever the request count
        status, body, _ = _request(with_limit.url, "POST", "/invocations", b" " * (2 << 20))
        assert status == 503 and "request bytes" in body["message"]
    finally:
        with_limit.stop()


def test_eight_concurrent_clients_get_their_own_answers(served, films, cli_predictions):
    def one(path: str) -> tuple[str, dict]:
        status, body, _ = _champion(served.url, {"dataframe_records": [{"content": _b64(path)}]})
        assert status == 200
        return path, body["predictions"][0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, (films + films)[:8]))
    for path, row in answers:
        assert row["probability"] == cli_predictions[path]["probability"]


# ------------------------------------------------------------------ mlflow
def test_a_missing_or_broken_model_exits_3_with_its_reason(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_text("not a model")
    for model, reason in (
        ("/nonexistent/m.onnx", "model file not found"),
        (str(broken), "cannot load the model"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "cxrlake.cli", "serve", "--port", "0", "--model", model],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 3 and reason in run.stderr, run.stderr


def test_mlflow_models_serve_of_the_pyfunc_answers_like_cxrlake_serve(served, mlflow_served, films):
    proc, url, folder = mlflow_served
    deadline = time.monotonic() + 120
    while True:
        try:
            if _request(url, "GET", "/ping")[0] == 200:
                break
        except OSError:
            pass
        log = (folder / "mlflow-serve.log").read_text()
        assert proc.poll() is None and time.monotonic() < deadline, log
        time.sleep(0.2)
    mlmodel = (folder / "pyfunc" / "MLmodel").read_text()
    assert '"name": "content"' in mlmodel and '"name": "probability"' in mlmodel  # signature
    wheel = "cxrlake-0.1.0-cp310-abi3-manylinux_2_17_x86_64.whl"
    assert (folder / "pyfunc" / "code" / wheel).is_file()  # the only code the model needs
    assert f"code/{wheel}" in (folder / "pyfunc" / "requirements.txt").read_text().split()
    contents = [_b64(p) for p in films] + ["not base64!", base64.b64encode(b"GIF89a").decode()]
    payload = {"dataframe_split": {"columns": ["content"], "data": [[c] for c in contents]}}
    status, by_mlflow, _ = _post(url, payload)
    assert status == 200, by_mlflow
    status, by_cxrlake, _ = _champion(served.url, payload)
    assert status == 200, by_cxrlake
    # every column, every row, bad rows included
    assert by_mlflow == by_cxrlake
    assert by_mlflow["predictions"][-2]["error"] == "content is not valid base64"


# ------------------------------------------------------------------ lakehouse
def _seed_feedback(lakehouse: Path, films: list[str]) -> None:
    """Radiologist verdicts on gold predictions of the films' bytes: the folder label."""
    import datetime as dt
    import hashlib

    lh = Lakehouse(lakehouse)
    now = dt.datetime.now(dt.timezone.utc)
    predictions, feedback = [], []
    for i, path in enumerate(films):
        sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        label = Path(path).parent.name
        predictions.append({"prediction_id": f"p{i}", "image_id": f"i{i}", "content_sha256": sha})
        feedback.append(
            {
                "feedback_id": f"{i:032x}",
                "prediction_id": f"p{i}",
                "image_id": f"i{i}",
                "radiologist_id": "dr.a",
                "feedback_type": "disagree",
                "correct_label": label,
                "feedback_timestamp": now,
            }
        )
    for spec, rows in ((schemas.PREDICTIONS, predictions), (schemas.FEEDBACK, feedback)):
        lh.ensure(spec)
        lh.append(spec, _full(spec.arrow_schema, rows))


def _full(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


def test_requests_are_logged_in_batches_and_compared_and_promote_moves_the_champion(
    served, lakehouse, films, challenger_path, capsys
):
    # each film twice in a row through the router: with share 0.5 one answer of each model
    for path in films:
        for _ in range(2):
            status, _, _ = _post(
                served.url,
                {
                    "dataframe_split": {"columns": ["content"], "data": [[_b64(path)]]},
                    "client_request_id": "c",
                },
            )
            assert status == 200
    _post(served.url, {"bad": 1})  # a 400, logged too
    log_lines = served.stop()
    assert "inference log:" in log_lines

    lh = Lakehouse(lakehouse)
    payload = lh.read(serving_tables.SERVING_PAYLOAD).to_pylist()
    statuses = [r["status_code"] for r in payload]
    assert set(statuses) <= {200, 400, 411, 413, 503} and 400 in statuses
    assert len({r["databricks_request_id"] for r in payload}) == len(payload)
    # every row in one commit at shutdown (version 0 created the table), not one per request
    assert lh.table(serving_tables.SERVING_PAYLOAD).version() == 1
    mine = [r for r in payload if r["client_request_id"] == "c"]
    assert len(mine) == 2 * len(films) and {r["status_code"] for r in mine} == {200}
    ok = [r for r in payload if r["status_code"] == 200]
    for row in ok:
        assert '"sha256:' in row["request"] and "/9j/" not in row["request"]
        assert row["served_entity_id"] in ("champion", "challenger")
        assert row["execution_duration_ms"] >= 0 and row["timestamp_ms"] > 0
        assert (
            json.loads(row["response"])["predictions"][0]["model_name"]
            == (row["served_model_name"])
        )
    assert {r["served_entity_id"] for r in ok} == {"champion", "challenger"}

    _seed_feedback(lakehouse, films)

    # the promote command in process (the server above is the subprocess that matters)
    def promote(*args: str) -> str:
        assert cli_main(["promote", "--lakehouse", str(lakehouse), *args]) == 0
        return capsys.readouterr().out

    out = promote("--alias", "challenger", challenger_path)
    assert "@challenger -> cxrlake-challenger v2.0.0" in out

    comparison = {r["model_name"]: r for r in lh.read(serving_tables.COMPARISON_TABLE).to_pylist()}
    champion, challenger = comparison[cxrlake.Model().name], comparison["cxrlake-challenger"]
    assert challenger["served_entity_id"] == "challenger"
    assert champion["paired_images"] == challenger["paired_images"] == len(films)
    assert champion["agreement_rate"] == challenger["agreement_rate"]
    assert champion["reviewed_images"] == len(films)
    expected = _sens_spec(served_rows=mine, films=films, model=cxrlake.Model().name)
    assert (champion["sensitivity"], champion["specificity"]) == expected
    assert "agreement" in out and "sensitivity" in out

    assert "@champion -> cxrlake-challenger v2.0.0" in promote()
    assert "(unchanged)" in promote()
    from cxrlake.serving.registry import LocalRegistry

    history = LocalRegistry(lakehouse).history()
    assert [(r["alias"], r["version"]) for r in history] == [("challenger", 1), ("champion", 1)]
    assert LocalRegistry(lakehouse).get("champion")["model_version"] == "2.0.0"
    # `cxrlake serve --champion @champion` (or --lakehouse alone) serves the copy in the lakehouse,
    # and refuses it once its bytes changed
    from cxrlake.serving.models import resolve_model_file

    served_file = Path(resolve_model_file("@champion", str(lakehouse)))
    assert (
        served_file.is_relative_to(lakehouse) and cxrlake.Model(str(served_file)).version == "2.0.0"
    )
    served_file.write_bytes(served_file.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="missing or changed"):
        resolve_model_file("@champion", str(lakehouse))
    assert len(lh.read(serving_tables.COMPARISON_TABLE)) == 2  # re-runs update, never add
    # `cxrlake maintain` compacts and vacuums the serving tables with the others
    assert cli_main(["maintain", "--lakehouse", str(lakehouse), "--dry-run"]) == 0
    planned = capsys.readouterr().out
    for spec in serving_tables.SERVING_TABLES:
        assert spec.qualified_name in planned, planned


def _sens_spec(served_rows, films, model):
    labels = {}
    for row in served_rows:
        request = json.loads(row["request"])
        response = json.loads(row["response"])
        digest = request["dataframe_split"]["data"][0][0].removeprefix("sha256:")
        if response["predictions"][0]["model_name"] == model:
            labels[digest] = response["predictions"][0]["predicted_label"]
    import hashlib

    tp = fn = tn = fp = 0
    for path in films:
        truth = Path(path).parent.name == "PNEUMONIA"
        predicted = labels[hashlib.sha256(Path(path).read_bytes()).hexdigest()] == 1
        tp += truth and predicted
        fn += truth and not predicted
        tn += not truth and not predicted
        fp += not truth and predicted
    return tp / (tp + fn), tn / (tn + fp)


def test_promote_reads_the_databricks_comparison_through_a_warehouse(capsys):
    """The Statement Execution answer (strings, JSON_ARRAY) becomes the comparison's types; the
    table name comes from the model's catalog and the deployed gold schema, validated."""
    from types import SimpleNamespace

    from databricks.sdk.service.sql import StatementState

    from cxrlake.serving.registry import (
        comparison_table_name,
        format_comparison,
        read_databricks_comparison,
    )

    names = serving_tables.GOLD_COMPARISON.names
    row = dict.fromkeys(names)
    row.update(
        model_name="m",
        model_version="7",
        served_entity_id="challenger",
        requests="12",
        images="12",
        image_errors="0",
        positive_rate="0.5",
        paired_images="6",
        agreement_rate="0.8333333333333334",
        reviewed_images="6",
        sensitivity="1.0",
        specificity="0.6666666666666666",
        computed_at="2026-12-06T10:00:00.000Z",
    )
    asked = []

    class Statements:
        def execute_statement(self, statement, warehouse_id, wait_timeout):
            asked.append((statement, warehouse_id))
            return SimpleNamespace(
                status=SimpleNamespace(state=StatementState.SUCCEEDED),
                manifest=SimpleNamespace(
                    schema=SimpleNamespace(columns=[SimpleNamespace(name=n) for n in names])
                ),
                result=SimpleNamespace(data_array=[[row[n] for n in names]]),
            )

    table_name = comparison_table_name("healthcare_catalog_prod.models.clf", "gold")
    assert table_name == "healthcare_catalog_prod.gold.champion_challenger_comparison"
    with pytest.raises(ValueError):
        comparison_table_name("healthcare_catalog_prod.models.clf", "gold; DROP TABLE x")
    table = read_databricks_comparison(
        table_name, "wh1", SimpleNamespace(statement_execution=Statements())
    )
    assert asked == [(f"SELECT * FROM {table_name} ORDER BY model_name, model_version", "wh1")]
    got = table.to_pylist()[0]
    assert (got["requests"], got["agreement_rate"], got["specificity"]) == (12, 5 / 6, 2 / 3)
    assert got["computed_at"].isoformat() == "2026-12-06T10:00:00+00:00"
    assert "83.3%" in format_comparison(table)
    # without a lakehouse or a warehouse there is nothing to show: refused before any change
    assert (
        cli_main(
            [
                "promote",
                "--registry-uri",
                "databricks-uc",
                "--model-name",
                "a.b.c",
                "--model-version",
                "2",
            ]
        )
        == 2
    )
    assert "--warehouse-id" in capsys.readouterr().err
