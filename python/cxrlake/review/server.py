"""The review web app: a stdlib ``ThreadingHTTPServer`` serving the page and a small JSON API.

Routes (all answers ``Cache-Control: no-store``):

- ``GET /``: the single-page app (worklist and case view); ``GET /static/<file>``: its JS/CSS.
- ``GET /api/session``: reviewer, CSRF token, label names, limits.
- ``GET /api/worklist?split=&label=&model_version=&reviewed=``: items ordered by need, progress.
- ``GET /api/case/<prediction_id>``: prediction, quality, threshold, heatmap, verdicts, label
  history of the image.
- ``GET /api/image/<image_id>``: the image bytes (sandboxed: see `images.read_sandboxed`).
- ``GET /api/agreement``: agreement figures over the current verdicts.
- ``POST /api/feedback``: record a verdict (JSON). ``POST /api/agreement``: append the figures
  to ``gold.review_agreement``.

Security: every request must name a host the server serves in ``Host`` (``127.0.0.1``,
``localhost`` or ``[::1]`` with its port, the ``--host`` address, the names in env
``CXRLAKE_REVIEW_ALLOWED_HOSTS``; behind the Databricks Apps proxy the ``X-Forwarded-Host``, checked
against ``CXRLAKE_REVIEW_ALLOWED_HOSTS`` / ``DATABRICKS_APP_URL`` when set), else 400: a page on a
DNS-rebound name cannot talk to the app. A POST needs the session's CSRF token in
``X-CSRF-Token``, an ``Origin`` (or ``Referer``) on one of those hosts and ``Content-Type:
application/json``; otherwise 403 and nothing is written. A ``Content-Length`` that is not one
decimal number, a ``Transfer-Encoding`` or a body that is not strict JSON (bad UTF-8, lone
surrogates, ``NaN``, nesting deeper than 32) is a 400. JSON answers never hold ``NaN``. Pages
carry a strict Content-Security-Policy (scripts and styles from the app only, no inline script)
and the app inserts user text with ``textContent`` only.

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
import re
import secrets
import socket
import sys
import threading
from collections.abc import Mapping
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import NoReturn
from urllib.parse import parse_qs, urlsplit

from cxrlake.heatmap import refine
from cxrlake.review import tables, worklist
from cxrlake.review.ports import ReviewStore, Row
from cxrlake.review.tables import ReviewError

MAX_BODY_BYTES = 64 * 1024
#: Deepest nesting of arrays and objects accepted in a request body (a verdict is flat).
MAX_JSON_DEPTH = 32
#: Extra host names the app answers to (comma-separated, ``name`` or ``name:port``).
ALLOWED_HOSTS_ENV = "CXRLAKE_REVIEW_ALLOWED_HOSTS"
#: The app's public URL on Databricks Apps, when the platform sets it.
APP_URL_ENV = "DATABRICKS_APP_URL"
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
_DECIMAL = re.compile(r"[0-9]{1,12}")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    return resources.files("cxrlake.review").joinpath("static", name).read_bytes()


def configured_hosts(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Host names from env `ALLOWED_HOSTS_ENV` and the netloc of `APP_URL_ENV`, lower-cased."""
    env = os.environ if environ is None else environ
    names = {n.strip().lower() for n in env.get(ALLOWED_HOSTS_ENV, "").split(",") if n.strip()}
    if env.get(APP_URL_ENV):
        netloc = urlsplit(env[APP_URL_ENV]).netloc.lower()
        if netloc:
            names.add(netloc)
    return frozenset(names)


def apps_host_pattern(environ: Mapping[str, str] | None = None) -> re.Pattern[str] | None:
    """The app's own URL host on Databricks Apps, from the variables the platform sets in every
    app (``DATABRICKS_APP_NAME``, ``DATABRICKS_WORKSPACE_ID``): Databricks assigns each app
    ``https://<app-name>-<workspace-id>.<region>.databricksapps.com`` (Databricks Apps, "Key
    concepts", App URL). ``None`` outside Databricks Apps."""
    env = os.environ if environ is None else environ
    name = env.get("DATABRICKS_APP_NAME", "").strip().lower()
    workspace = env.get("DATABRICKS_WORKSPACE_ID", "").strip()
    if not re.fullmatch(r"[a-z0-9-]{1,63}", name) or not re.fullmatch(r"[0-9]{1,24}", workspace):
        return None
    return re.compile(
        rf"{re.escape(name)}-{workspace}\.[a-z0-9-]+(\.[a-z0-9-]+)*\.databricksapps\.com"
    )


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def public_address() -> str:
    """The address other machines reach this one on: the source address of the default route
    (a UDP socket is "connected" to a documentation address; no packet is sent), else the host
    name."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostname()


def served_hosts(host: str, port: int, extra: frozenset[str] = frozenset()) -> frozenset[str]:
    """The ``Host`` values a server bound to ``host:port`` answers: the loopback names with the
    port, ``host`` itself, every name of the machine when bound to all interfaces, and
    ``extra`` (configured names, as given)."""
    names = set(LOCAL_NAMES)
    if host in WILDCARD_ADDRESSES:
        # no getfqdn(): a reverse DNS lookup can stall start-up for as long as DNS times out
        names |= {public_address(), socket.gethostname()}
    else:
        names.add(_bracketed(host))
    hosts = {f"{n}:{port}".lower() for n in names if n}
    if port == 80:
        hosts |= {n.lower() for n in names if n}
    return frozenset(hosts | extra)


class ReviewApp:
    """Store + identity + CSRF secret: everything a request handler needs."""

    def __init__(
        self, store: ReviewStore, reviewer: str | None = None, trust_proxy_headers: bool = False
    ) -> None:
        self.store = store
        self.reviewer = reviewer
        self.trust_proxy_headers = trust_proxy_headers
        # the Host values answered (set by `make_server` once the port is known)
        self.hosts: frozenset[str] = frozenset()
        # behind the Apps proxy: the names the proxy may forward (empty: whatever it forwards)
        self.proxy_hosts = configured_hosts()
        self.proxy_host_pattern = apps_host_pattern()
        # CSRF key: per process, or shared by every instance of a scaled-out app through
        # CXRLAKE_REVIEW_SECRET (tokens are then valid on any instance)
        shared = os.environ.get("CXRLAKE_REVIEW_SECRET", "")
        self.secret = shared.encode("utf-8") if shared else secrets.token_bytes(32)
        self.lock = threading.Lock()

    def reviewer_of(self, headers: Message) -> str:
        if self.trust_proxy_headers:
            who = headers.get("X-Forwarded-Email") or headers.get("X-Forwarded-Preferred-Username")
            return tables.validate_reviewer(who)
        return tables.validate_reviewer(self.reviewer)

    def csrf_token(self, reviewer: str) -> str:
        return hmac.new(self.secret, reviewer.encode("utf-8"), hashlib.sha256).hexdigest()

    def case(self, prediction_id: str, reviewer: str) -> Row:
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
            # the map a reader sees: upsampled and smoothed (cxrlake.heatmap.refine)
            "heatmap_display": refine(p.get("heatmap")),
            "current_label_on_earlier_bytes": tables.judged_other_bytes(
                cur, p.get("content_sha256")
            ),
            "verdicts": [_jsonable(v) for v in verdicts],
            "my_verdict": next(
                (_jsonable(v) for v in reversed(verdicts) if v["radiologist_id"] == reviewer),
                None,
            ),
            "label_history": [_jsonable(h) for h in history],
        }


def _jsonable(row: Row) -> Row:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


class Handler(BaseHTTPRequestHandler):
    """One request; ``self.server.app`` is the `ReviewApp`."""

    server: ReviewServer
    server_version = "cxrlake-review"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> ReviewApp:
        return self.server.app

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if getattr(self.server, "verbose", False):
            sys.stderr.write("review: " + format % args + "\n")

    # --------------------------------------------------------------- responses
    def _send(
        self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
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

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(_finite(data), default=str, allow_nan=False).encode("utf-8")
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
        self._check_host()
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
            image, kind = store.image(path[len("/api/image/") :])
            self._send(200, image, kind)
        elif path == "/api/agreement":
            rows = store.current_agreement()
            self._json(200, {"rows": [_jsonable(r) for r in rows]})
        else:
            raise ReviewError("not found", 404)

    def _request_host(self) -> str:
        """The host the browser addressed: ``Host``, or behind the Apps proxy the
        ``X-Forwarded-Host`` it sets; exactly one, else 400."""
        name = "X-Forwarded-Host" if self.app.trust_proxy_headers else "Host"
        values = self.headers.get_all(name) or []
        if name == "X-Forwarded-Host" and not values:
            name, values = "Host", self.headers.get_all("Host") or []
        if len(values) != 1:
            raise ReviewError(f"exactly one {name} header is required", 400)
        return values[0].strip().lower()

    def _check_host(self) -> None:
        """400 unless the request names a host this server serves (DNS rebinding)."""
        host = self._request_host()
        if self.app.trust_proxy_headers:
            allowed = self.app.proxy_hosts
            pattern = self.app.proxy_host_pattern
            known = host in allowed or host in self.app.hosts
            if pattern is not None and pattern.fullmatch(host):
                known = True
            if (allowed or pattern is not None) and not known:
                raise ReviewError("unknown host", 400)
        elif host not in self.app.hosts:
            raise ReviewError("unknown host", 400)

    def _check_same_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is None or origin == "null":
            referer = self.headers.get("Referer")
            origin = (
                None if referer is None else "{0.scheme}://{0.netloc}".format(urlsplit(referer))
            )
        if origin is None:
            raise ReviewError("cross-site request refused: no Origin header", 403)
        parts = urlsplit(origin)
        netloc = parts.netloc.lower()
        hosts = {self._request_host()} if self.app.trust_proxy_headers else set(self.app.hosts)
        if parts.scheme not in ("http", "https") or netloc not in hosts:
            raise ReviewError("cross-site request refused: Origin does not match", 403)

    def _post(self) -> None:
        self._check_host()
        path = urlsplit(self.path).path
        reviewer = self.app.reviewer_of(self.headers)
        self._check_same_origin()
        token = self.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(token, self.app.csrf_token(reviewer)):
            raise ReviewError("missing or invalid CSRF token", 403)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ReviewError("Content-Type must be application/json", 415)
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            raise ReviewError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        raw = self.rfile.read(length) if length else b""
        if path == "/api/feedback":
            payload = parse_json_body(raw)
            if not isinstance(payload, dict):
                raise ReviewError("the request body must be a JSON object")
            row, created = self.app.store.record_verdict(payload, reviewer)
            self._json(201 if created else 200, {"feedback": _jsonable(row), "created": created})
        elif path == "/api/agreement":
            self._json(200, {"rows_written": self.app.store.write_agreement()})
        else:
            raise ReviewError("not found", 404)

    def _content_length(self) -> int:
        """The body's length: one ``Content-Length`` of decimal digits (a negative or malformed
        one used to be read as "to the end of the stream"), no ``Transfer-Encoding``."""
        if self.headers.get_all("Transfer-Encoding"):
            raise ReviewError("Transfer-Encoding is not accepted: send a Content-Length", 400)
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        value = values.pop()
        if values or not _DECIMAL.fullmatch(value):
            raise ReviewError("Content-Length must be one non-negative decimal number", 400)
        return int(value)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(raw: bytes) -> object:
    """A request body as strict JSON: UTF-8 without lone surrogates (raw or ``\\ud800``
    escapes), no ``NaN``/``Infinity``, at most `MAX_JSON_DEPTH` levels; else `ReviewError` 400."""
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReviewError("the request body is not valid JSON") from None
    stack: list[tuple[object, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ReviewError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(k, depth) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ReviewError("the request body is not valid JSON: lone surrogate") from None
    return payload


def _finite(value: object) -> object:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, so answers are
    strict JSON (a browser's ``JSON.parse`` rejects ``NaN``)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ReviewApp, verbose: bool = False) -> None:
        super().__init__(address, Handler)
        self.app = app
        self.verbose = verbose

    @property
    def listens_everywhere(self) -> bool:
        """Whether the server is bound to every interface (``0.0.0.0`` / ``::``)."""
        return self.server_address[0] in WILDCARD_ADDRESSES

    @property
    def url(self) -> str:
        """The address to open: the machine's own address when bound to every interface."""
        host, port = self.server_address[:2]
        shown = public_address() if self.listens_everywhere else _bracketed(str(host))
        return f"http://{shown}:{port}/"


def make_server(
    store: ReviewStore,
    host: str = "127.0.0.1",
    port: int = 8765,
    reviewer: str | None = None,
    trust_proxy_headers: bool = False,
    verbose: bool = False,
) -> ReviewServer:
    """A bound (not yet serving) server; call ``serve_forever()`` or run it in a thread."""
    app = ReviewApp(store, reviewer, trust_proxy_headers)
    server = ReviewServer((host, port), app, verbose)
    app.hosts = served_hosts(host, server.server_address[1], configured_hosts())
    return server


__all__ = ["HTTPStatus", "ReviewApp", "ReviewServer", "make_server"]
