"""The review server's answers to hostile requests (issue 25): Host names it does not serve
(DNS rebinding), Origins on such names, malformed Content-Length and bodies, reused feedback
ids, a source file swapped for a symlink, non-finite numbers in answers, and `--host 0.0.0.0`."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from review_support import Running, build_lakehouse, feedback_version

from cxrlake.medallion import schemas


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    return build_lakehouse(shared_data, tmp_path_factory.mktemp("review_hardening"))


@pytest.fixture(scope="module")
def app(built):
    running = Running(built[0], "dr.mallory")
    yield running
    running.close()


def _raw(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple:
    """One request written by hand (urllib would fix Host and Content-Length)."""
    port = int(app.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before taking it all: read its answer
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
    payload = json.loads(data) if data.startswith(b"{") else data
    return response.status, payload


def _post_headers(app, **extra: str) -> dict[str, str]:
    host = app.url.split("://", 1)[1]
    return {
        "Host": host,
        "Content-Type": "application/json",
        "X-CSRF-Token": app.token,
        "Origin": app.url,
        "Connection": "close",
        **extra,
    }


# --------------------------------------------------------------------------- Host and Origin
def test_only_the_hosts_it_serves_are_answered(app):
    port = app.url.rsplit(":", 1)[1]
    pid = app.get("/api/worklist")[1]["items"][0]["prediction_id"]
    image = app.get(f"/api/case/{pid}")[1]["image_id"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        status, _ = _raw(app, "GET", "/api/session", {"Host": host, "Connection": "close"})
        assert status == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{int(port) + 1}", ""):
        for path in ("/", "/api/session", f"/api/image/{image}", "/api/worklist"):
            status, body = _raw(app, "GET", path, {"Host": host, "Connection": "close"})
            assert status == 400 and body["error"] == "unknown host", (host, path)
    # two Host headers: refused, whatever they say
    status, _ = _raw(
        app,
        "GET",
        "/api/session",
        {"Host": f"127.0.0.1:{port}", "host": f"evil.example:{port}", "Connection": "close"},
    )
    assert status == 400


def test_a_rebound_page_cannot_post_a_verdict(app):
    port = app.url.rsplit(":", 1)[1]
    pid = app.get("/api/worklist")[1]["items"][0]["prediction_id"]
    body = json.dumps({"prediction_id": pid, "feedback_type": "agree"}).encode()
    before = feedback_version(app.store)
    for headers in (
        # the rebound name in Host and Origin alike (the old check compared one with the other)
        _post_headers(app, Host=f"evil.example:{port}", Origin=f"http://evil.example:{port}"),
        # a served Host, but the page's Origin is elsewhere
        _post_headers(app, Origin=f"http://evil.example:{port}"),
        _post_headers(app, Origin=f"ftp://127.0.0.1:{port}"),
    ):
        headers["Content-Length"] = str(len(body))
        status, answer = _raw(app, "POST", "/api/feedback", headers, body)
        assert status in (400, 403), (headers, answer)
    assert feedback_version(app.store) == before


# --------------------------------------------------------------------------- bodies
@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "+5", " 0x10", "99999999999999999999"])
def test_a_bad_content_length_is_a_400(app, length):
    # No body follows the headers (the client's side is shut): a server that took `-1` as "read
    # to the end" would read nothing and answer about the JSON instead. A body the server leaves
    # unread would make its close a reset that can swallow the answer.
    status, answer = _raw(
        app, "POST", "/api/feedback", _post_headers(app, **{"Content-Length": length}), b""
    )
    assert status == 400 and "Content-Length" in answer["error"], answer


def test_transfer_encoding_is_refused(app):
    headers = _post_headers(app, **{"Transfer-Encoding": "chunked"})
    status, answer = _raw(app, "POST", "/api/feedback", headers)
    assert status == 400 and "Transfer-Encoding" in answer["error"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":' * 40 + b"1" + b"}" * 40,  # within it, deeper than the server accepts
        b'{"prediction_id": "x", "feedback_type": "agree", "comments": "\\ud800"}',
        b'{"comments": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8: not UTF-8
        b'{"comments": "\xff\xfe"}',
        b'{"confidence_level": NaN}',
        b'{"a": Infinity}',
        b"\x00",
        b"",
    ],
)
def test_a_malformed_body_is_a_400_never_a_500(app, body):
    before = feedback_version(app.store)
    headers = _post_headers(app, **{"Content-Length": str(len(body))})
    status, answer = _raw(app, "POST", "/api/feedback", headers, body)
    assert status == 400, answer
    assert feedback_version(app.store) == before


def test_deep_nesting_within_the_body_limit_is_a_400(app):
    body = b"[" * 30_000 + b"]" * 30_000  # 60 KB, under the 64 KiB limit: beyond the parser's
    # recursion limit (RecursionError, a 500 before)
    headers = _post_headers(app, **{"Content-Length": str(len(body))})
    status, answer = _raw(app, "POST", "/api/feedback", headers, body)
    assert status == 400 and "JSON" in answer["error"], answer


# --------------------------------------------------------------------------- feedback ids
def test_a_reused_feedback_id_with_another_body_is_a_conflict(app):
    items = app.get("/api/worklist")[1]["items"]
    pid = items[1]["prediction_id"]
    fid = "cd" * 16
    first = {"prediction_id": pid, "feedback_type": "uncertain", "feedback_id": fid}
    assert app.post("/api/feedback", first)[0] == 201
    before = feedback_version(app.store)
    assert app.post("/api/feedback", first)[0] == 200  # a retry of the same verdict
    for changed in (
        {**first, "comments": "changed my mind"},
        {**first, "confidence_level": "high"},
        {**first, "prediction_id": items[2]["prediction_id"]},
    ):
        status, body = app.post("/api/feedback", changed)
        assert status == 409 and "feedback_id already used" in body["error"], changed
    assert feedback_version(app.store) == before


@pytest.mark.parametrize("fid", [0, "", False, [], "AB" * 16, "ab" * 16 + "\n", 1.5])
def test_a_feedback_id_that_is_not_an_id_is_refused_not_replaced(app, fid):
    pid = app.get("/api/worklist")[1]["items"][0]["prediction_id"]
    before = feedback_version(app.store)
    status, body = app.post(
        "/api/feedback", {"prediction_id": pid, "feedback_type": "uncertain", "feedback_id": fid}
    )
    assert status == 400 and "feedback_id must be" in body["error"], fid
    assert feedback_version(app.store) == before


# --------------------------------------------------------------------------- images
def test_a_source_file_swapped_for_a_symlink_falls_back_to_bronze(built, tmp_path):
    lakehouse, source = built
    running = Running(lakehouse, "dr.mallory")
    try:
        case = running.get(
            "/api/case/" + running.get("/api/worklist")[1]["items"][0]["prediction_id"]
        )[1]
        image_id = case["image_id"]
        row = running.store.lh.read(schemas.SILVER, ["image_id", "file_path"]).to_pylist()
        path = next(r["file_path"] for r in row if r["image_id"] == image_id)
        original = Path(path).read_bytes()
        outside = tmp_path / "elsewhere.jpeg"
        outside.write_bytes(b"\xff\xd8\xff not the scored image")
        os.replace(path, str(tmp_path / "moved.jpeg"))
        os.symlink(outside, path)
        try:
            status, data, headers = running.request("GET", f"/api/image/{image_id}")
        finally:
            os.unlink(path)
            os.replace(str(tmp_path / "moved.jpeg"), path)
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert data == original  # the bytes kept in bronze, not the symlink's target
    finally:
        running.close()


# --------------------------------------------------------------------------- JSON answers
def test_json_answers_never_hold_nan():
    from cxrlake.review.server import _finite

    data = {"a": float("nan"), "b": [float("inf"), -float("inf"), 0.5], "c": {"d": float("nan")}}
    text = json.dumps(_finite(data), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [None, None, 0.5], "c": {"d": None}}


# --------------------------------------------------------------------------- --host 0.0.0.0
def test_listening_everywhere_prints_the_real_address_and_a_warning(built):
    from cxrlake.review.server import public_address

    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrlake.cli",
            "review",
            "--lakehouse",
            str(built[0]),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--reviewer",
            "dr.mallory",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    ) as proc:
        try:
            line = ""
            deadline = time.monotonic() + 120
            while "serving" not in line and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    break
            assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
            warning = ""
            for _ in range(10):
                warning = proc.stderr.readline()
                if "warning" in warning or not warning:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    url = line.rsplit(" at ", 1)[1].strip()
    assert url.startswith(f"http://{public_address()}:") and "0.0.0.0" not in url, line
    assert "127.0.0.1" not in url or public_address() == "127.0.0.1"
    assert "warning: listening on every interface" in warning, warning
    # the printed address is one the server answers to
    host = url.split("://", 1)[1].rstrip("/")
    from cxrlake.review.server import served_hosts

    assert host in served_hosts("0.0.0.0", int(host.rsplit(":", 1)[1]))


def test_behind_the_apps_proxy_the_forwarded_host_is_checked(app, monkeypatch):
    """Databricks Apps mode: the proxy's X-Forwarded-Host is the host name, checked against
    CXRLAKE_REVIEW_ALLOWED_HOSTS; the Origin must be that host."""
    import threading

    from cxrlake.review.server import make_server

    monkeypatch.setenv("CXRLAKE_REVIEW_ALLOWED_HOSTS", "cxrlake-review-1234.aws.databricksapps.com")
    server = make_server(app.store, "127.0.0.1", 0, trust_proxy_headers=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxied = type("Proxied", (), {"url": server.url.rstrip("/")})()
    try:
        who = {"X-Forwarded-Email": "ana@hospital.example", "Connection": "close"}
        ok_host = "cxrlake-review-1234.aws.databricksapps.com"
        local = server.url.split("://", 1)[1].rstrip("/")
        status, body = _raw(
            proxied, "GET", "/api/session", {"Host": local, "X-Forwarded-Host": ok_host, **who}
        )
        assert status == 200 and body["reviewer"] == "ana@hospital.example"
        token = body["csrf_token"]
        status, body = _raw(
            proxied,
            "GET",
            "/api/session",
            {"Host": local, "X-Forwarded-Host": "evil.example", **who},
        )
        assert status == 400 and body["error"] == "unknown host"
        post = {
            "Host": local,
            "X-Forwarded-Host": ok_host,
            "Content-Type": "application/json",
            "X-CSRF-Token": token,
            "Content-Length": "2",
            **who,
        }
        status, body = _raw(
            proxied, "POST", "/api/feedback", {**post, "Origin": "https://evil.example"}, b"{}"
        )
        assert status == 403 and "Origin does not match" in body["error"]
        status, body = _raw(
            proxied, "POST", "/api/feedback", {**post, "Origin": f"https://{ok_host}"}, b"{}"
        )
        assert status == 400 and "prediction_id is required" in body["error"]  # past the checks
    finally:
        server.shutdown()
        server.server_close()


def test_on_databricks_apps_the_app_url_host_is_derived_from_the_platform_variables(
    app, monkeypatch
):
    """Without CXRLAKE_REVIEW_ALLOWED_HOSTS the app still answers only its own URL's host,
    <app-name>-<workspace-id>.<region>.databricksapps.com, from the variables every app gets."""
    import threading

    from cxrlake.review.server import apps_host_pattern, make_server

    monkeypatch.delenv("CXRLAKE_REVIEW_ALLOWED_HOSTS", raising=False)
    monkeypatch.delenv("DATABRICKS_APP_URL", raising=False)
    monkeypatch.setenv("DATABRICKS_APP_NAME", "cxrlake-review-dev")
    monkeypatch.setenv("DATABRICKS_WORKSPACE_ID", "1234567890")
    pattern = apps_host_pattern()
    assert pattern is not None
    assert pattern.fullmatch("cxrlake-review-dev-1234567890.aws.databricksapps.com")
    assert not pattern.fullmatch(
        "cxrlake-review-dev-1234567890.aws.databricksapps.com.evil.example"
    )
    assert not pattern.fullmatch("other-app-1234567890.aws.databricksapps.com")
    assert apps_host_pattern({"DATABRICKS_APP_NAME": "x.*", "DATABRICKS_WORKSPACE_ID": "1"}) is None
    server = make_server(app.store, "127.0.0.1", 0, trust_proxy_headers=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxied = type("Proxied", (), {"url": server.url.rstrip("/")})()
    try:
        who = {"X-Forwarded-Email": "ana@hospital.example", "Connection": "close"}
        local = server.url.split("://", 1)[1].rstrip("/")
        ok_host = "cxrlake-review-dev-1234567890.gcp.databricksapps.com"
        status, _ = _raw(
            proxied, "GET", "/api/session", {"Host": local, "X-Forwarded-Host": ok_host, **who}
        )
        assert status == 200
        status, body = _raw(
            proxied,
            "GET",
            "/api/session",
            {"Host": local, "X-Forwarded-Host": "evil.example", **who},
        )
        assert status == 400 and body["error"] == "unknown host"
    finally:
        server.shutdown()
        server.server_close()
