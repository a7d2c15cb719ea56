"""The review web app: a stdlib ``ThreadingHTTPServer`` serving the page and a small JSON API.

Routes (all answers ``Cache-Control: no-store``):

- ``GET /``: the single-page app (worklist and case view); ``GET /static/<file>``: its JS/CSS.
- ``GET /api/session``: reviewer, CSRF token, label names, limits.
- ``GET /api/worklist?split=&label=&model_version=&reviewed=``: items ordered by need, progress.
- ``GET /api/case/<prediction_id>``: prediction, quality, threshold, heatmap, verdicts, label
  history of the image.
- ``GET /api/image/<image_id>``: the image bytes (sandboxed: see `store.read_sandboxed`).
- ``GET /api/agreement``: agreement figures over the current verdicts.
- ``POST /api/feedback``: record a verdict (JSON). ``POST /api/agreement``: append the figures
  to ``gold.review_agreement``.

Security: a POST needs the session's CSRF token in ``X-CSRF-Token``, an ``Origin`` (or
``Referer``) equal to the app's own origin and ``Content-Type: application/json``; otherwise 403
and nothing is written. Pages carry a strict Content-Security-Policy (scripts and styles from the
app only, no inline script) and the app inserts user text with ``textContent`` only.

Reviewer identity: locally the ``--reviewer`` value or the OS user; behind Databricks Apps the
``X-Forwarded-Email`` (else ``X-Forwarded-Preferred-Username``) header that the Apps proxy sets
(https://docs.databricks.com/aws/en/dev-tools/databricks-apps/http-headers). The headers are
trusted only in that mode, never locally.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cxrlake.review import tables, worklist
from cxrlake.review.tables import ReviewError

MAX_BODY_BYTES = 64 * 1024
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    return resources.files("cxrlake.review").joinpath("static", name).read_bytes()


class ReviewApp:
    """Store + identity + CSRF secret: everything a request handler needs."""

    def __init__(self, store: Any, reviewer: str | None = None, trust_proxy_headers: bool = False):
        self.store = store
        self.reviewer = reviewer
        self.trust_proxy_headers = trust_proxy_headers
        # CSRF key: per process, or shared by every instance of a scaled-out app through
        # CXRLAKE_REVIEW_SECRET (tokens are then valid on any instance)
        shared = os.environ.get("CXRLAKE_REVIEW_SECRET", "")
        self.secret = shared.encode("utf-8") if shared else secrets.token_bytes(32)
        self.lock = threading.Lock()

    def reviewer_of(self, headers: Any) -> str:
        if self.trust_proxy_headers:
            who = headers.get("X-Forwarded-Email") or headers.get("X-Forwarded-Preferred-Username")
            return tables.validate_reviewer(who)
        return tables.validate_reviewer(self.reviewer)

    def csrf_token(self, reviewer: str) -> str:
        return hmac.new(self.secret, reviewer.encode("utf-8"), hashlib.sha256).hexdigest()

    def case(self, prediction_id: str, reviewer: str) -> dict[str, Any]:
        p = self.store.prediction(prediction_id)
        if p is None:
            raise ReviewError(f"unknown prediction {prediction_id[:64]!r}", 404)
        verdicts = sorted(self.store.feedback(prediction_id), key=lambda r: r["feedback_timestamp"])
        history = self.store.label_history(p["image_id"])
        cur = tables.current_labels(history).get(p["image_id"])
        return {
            "prediction_id": p["prediction_id"],
            "image_id": p["image_id"],
            "dataset_split": p.get("dataset_split"),
            "folder_label": tables.label_name_of(p.get("true_label")) or "UNLABELLED",
            "current_label": cur["label_name"] if cur else None,
            "predicted_label": tables.label_name_of(p.get("predicted_label")),
            "probability": p.get("prediction_probability"),
            "threshold": p.get("threshold"),
            "threshold_source": p.get("threshold_source"),
            "model_name": p.get("model_name"),
            "model_version": p.get("model_version"),
            "quality_score": p.get("quality_score"),
            "heatmap": p.get("heatmap"),
            "verdicts": [_jsonable(v) for v in verdicts],
            "my_verdict": next(
                (_jsonable(v) for v in reversed(verdicts) if v["radiologist_id"] == reviewer),
                None,
            ),
            "label_history": [_jsonable(h) for h in history],
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


class Handler(BaseHTTPRequestHandler):
    """One request; ``self.server.app`` is the `ReviewApp`."""

    server_version = "cxrlake-review"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> ReviewApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if getattr(self.server, "verbose", False):
            sys.stderr.write("review: " + format % args + "\n")

    # --------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data, default=str).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # --------------------------------------------------------------- routing
    def do_GET(self) -> None:  # noqa: N802
        try:
            self._get()
        except ReviewError as e:
            self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - reported to the client, logged
            sys.stderr.write(f"review: internal error on GET {self.path}: {e!r}\n")
            self._error(500, "internal error (see the server log)")

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._post()
        except ReviewError as e:
            self.close_connection = True  # the body may be unread: do not parse it as a request
            self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001
            sys.stderr.write(f"review: internal error on POST {self.path}: {e!r}\n")
            self._error(500, "internal error (see the server log)")

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            reviewer = self.app.reviewer_of(self.headers)
            html = _static("index.html").decode("utf-8")
            html = html.replace("{{CSRF_TOKEN}}", self.app.csrf_token(reviewer))
            self._send(200, html.encode("utf-8"), "text/html; charset=utf-8")
            return
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            suffix = name[name.rfind(".") :] if "." in name else ""
            if name not in ("app.js", "app.css") or suffix not in STATIC_TYPES:
                raise ReviewError("not found", 404)
            self._send(200, _static(name), STATIC_TYPES[suffix] + "; charset=utf-8")
            return
        if path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
            return
        reviewer = self.app.reviewer_of(self.headers)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        store = self.app.store
        if path == "/api/session":
            self._json(
                200,
                {
                    "reviewer": reviewer,
                    "csrf_token": self.app.csrf_token(reviewer),
                    "labels": list(tables.LABEL_NAMES),
                    "feedback_types": list(tables.FEEDBACK_TYPES),
                    "confidence_levels": list(tables.CONFIDENCE_LEVELS),
                    "max_comment_chars": tables.MAX_COMMENT_CHARS,
                    "engine": store.engine,
                },
            )
        elif path == "/api/worklist":
            data = worklist.build_worklist(
                store.predictions(),
                store.feedback(),
                tables.current_labels(store.label_history()),
                reviewer,
                split=query.get("split") or None,
                label=query.get("label") or None,
                model_version=query.get("model_version") or None,
                reviewed=query.get("reviewed") or None,
            )
            self._json(200, data)
        elif path.startswith("/api/case/"):
            self._json(200, self.app.case(path[len("/api/case/") :], reviewer))
        elif path.startswith("/api/image/"):
            data, kind = store.image(path[len("/api/image/") :])
            self._send(200, data, kind)
        elif path == "/api/agreement":
            rows = store.compute_agreement()
            self._json(200, {"rows": [_jsonable(r) for r in rows]})
        else:
            raise ReviewError("not found", 404)

    def _check_same_origin(self) -> None:
        host = self.headers.get("Host", "")
        hosts = {host}
        if self.app.trust_proxy_headers and self.headers.get("X-Forwarded-Host"):
            hosts.add(self.headers["X-Forwarded-Host"])
        origin = self.headers.get("Origin")
        if origin is None or origin == "null":
            referer = self.headers.get("Referer")
            origin = (
                None if referer is None else "{0.scheme}://{0.netloc}".format(urlsplit(referer))
            )
        if origin is None:
            raise ReviewError("cross-site request refused: no Origin header", 403)
        if urlsplit(origin).netloc not in hosts:
            raise ReviewError("cross-site request refused: Origin does not match", 403)

    def _post(self) -> None:
        path = urlsplit(self.path).path
        reviewer = self.app.reviewer_of(self.headers)
        self._check_same_origin()
        token = self.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(token, self.app.csrf_token(reviewer)):
            raise ReviewError("missing or invalid CSRF token", 403)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ReviewError("Content-Type must be application/json", 415)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ReviewError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        raw = self.rfile.read(length) if length else b""
        if path == "/api/feedback":
            try:
                payload = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ReviewError("the request body is not valid JSON") from None
            row, created = self.app.store.record_verdict(payload, reviewer)
            self._json(201 if created else 200, {"feedback": _jsonable(row), "created": created})
        elif path == "/api/agreement":
            self._json(200, {"rows_written": self.app.store.write_agreement()})
        else:
            raise ReviewError("not found", 404)


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ReviewApp, verbose: bool = False):
        super().__init__(address, Handler)
        self.app = app
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}/"


def make_server(
    store: Any,
    host: str = "127.0.0.1",
    port: int = 8765,
    reviewer: str | None = None,
    trust_proxy_headers: bool = False,
    verbose: bool = False,
) -> ReviewServer:
    """A bound (not yet serving) server; call ``serve_forever()`` or run it in a thread."""
    app = ReviewApp(store, reviewer, trust_proxy_headers)
    return ReviewServer((host, port), app, verbose)


__all__ = ["HTTPStatus", "ReviewApp", "ReviewServer", "make_server"]
