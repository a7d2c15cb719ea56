"""The HTTP server of `cxrlake serve`: the MLflow / Databricks Model Serving scoring protocol.

Routes:

- ``GET /ping``, ``GET /health``: 200 ``{"status": "ready"}`` once the models are loaded,
  503 ``{"status": "loading"}`` before (the port answers from the start, so a load balancer or
  a test can tell "loading" from "down"); ``GET /version``: cxrlake's version and the served
  entities.
- ``POST /invocations`` (also ``/serving-endpoints/<name>/invocations``): a scoring request
  (`cxrlake.serving.protocol`), routed to the champion or the challenger
  (`cxrlake.serving.models.Router`); ``POST /served-models/<entity>/invocations`` asks one
  entity by name.

Answers: 200 ``{"predictions": [...]}``; 400 bad JSON or request (message says what); 400 a
Host header that is not loopback or allowed (DNS rebinding); 404; 411 no Content-Length; 413
a body over 16 MiB (not read); 415 not JSON; 503 loading, or too many requests waiting (bounded
queue, ``Retry-After``). Errors are ``{"error_code": ..., "message": ...}`` as MLflow answers.
Nothing about an image (bytes, names) is printed; the access log is off unless ``verbose``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from cxrlake.model import Model
from cxrlake.serving.batcher import BatcherOptions, MicroBatcher, QueueFull
from cxrlake.serving.models import CHALLENGER, CHAMPION, Router, ServedModel
from cxrlake.serving.protocol import (
    MAX_BODY_BYTES,
    ProtocolError,
    logged_request,
    parse_request,
    prediction_rows,
    warmup_png,
)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "ENDPOINT_NOT_FOUND",
    411: "LENGTH_REQUIRED",
    413: "REQUEST_ENTITY_TOO_LARGE",
    408: "REQUEST_TIMEOUT",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class InferenceRecorder(Protocol):
    """Where answered requests are recorded (`cxrlake.serving.inference_log.InferenceLog`)."""

    def record(
        self,
        request_id: str,
        client_request_id: str | None,
        started: dt.datetime,
        status_code: int,
        duration_ms: int,
        served: dict[str, str] | None,
        request: str | None,
        response: str | None,
    ) -> None: ...


@dataclass
class _Exchange:
    """One scoring request: its id, when it started, and where `finish` records its answer."""

    log: InferenceRecorder | None
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    clock: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def ids(self) -> dict[str, str]:
        """The headers every answer carries."""
        return {"X-Request-Id": self.request_id}

    def finish(
        self,
        status: int,
        response: bytes,
        served: dict[str, str] | None = None,
        request: str | None = None,
        client_id: str | None = None,
    ) -> None:
        """Record the answer ``response`` (status ``status``) in the inference log, if any."""
        if self.log is not None:
            self.log.record(
                self.request_id,
                client_id,
                self.started,
                status,
                int(round((time.perf_counter() - self.clock) * 1000)),
                served,
                request,
                response.decode("utf-8"),
            )


def host_name(header: str) -> str:
    """The host part of a Host header (no port, IPv6 brackets removed), lowercased."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


class ScoringApp:
    """State shared by the request threads: the router once loaded, limits, the log."""

    def __init__(
        self,
        allowed_hosts: set[str],
        inference_log: InferenceRecorder | None = None,
        max_inflight: int = 64,
        timeout_s: float = 120.0,
        verbose: bool = False,
        max_inflight_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self.allowed_hosts = {h.lower() for h in allowed_hosts} | LOOPBACK_HOSTS
        self.inference_log = inference_log
        self.router: Router | None = None
        self.load_error: str | None = None
        self.timeout_s = timeout_s
        self.verbose = verbose
        self._inflight = threading.BoundedSemaphore(max_inflight)
        # request bodies held at once, in bytes (a parsed body costs a few times its size, so
        # this, not the request count, is what bounds the memory of request handling)
        self.max_inflight_bytes = max_inflight_bytes
        self._inflight_bytes = 0
        self._bytes_lock = threading.Lock()

    def admit(self, length: int) -> bool:
        """Take a request slot and ``length`` bytes of the body budget, or neither."""
        if not self._inflight.acquire(blocking=False):
            return False
        with self._bytes_lock:
            if self._inflight_bytes + length <= self.max_inflight_bytes:
                self._inflight_bytes += length
                return True
        self._inflight.release()
        return False

    def release(self, length: int) -> None:
        with self._bytes_lock:
            self._inflight_bytes -= length
        self._inflight.release()

    def ready(self, router: Router) -> None:
        self.router = router

    def failed(self, message: str) -> None:
        self.load_error = message

    def status(self) -> tuple[int, dict[str, str]]:
        if self.router is not None:
            return 200, {"status": "ready"}
        if self.load_error is not None:
            return 500, {"status": "failed", "message": self.load_error}
        return 503, {"status": "loading"}

    def version(self) -> dict[str, object]:
        try:
            package_version = version("cxrlake")
        except PackageNotFoundError:  # a source checkout without metadata
            package_version = "unknown"
        router = self.router
        entities = [] if router is None else [m.describe() for m in router.entities]
        share = 0.0 if router is None else router.share
        batchers = [] if router is None else [m.batcher for m in router.entities]
        batching = {
            "core_calls": sum(b.batches for b in batchers),
            "images": sum(b.batched_images for b in batchers),
        }
        return {
            "cxrlake": package_version,
            "served_entities": entities,
            "challenger_share": share,
            "batching": batching,
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # an idle keep-alive connection, or a body that stops arriving, is closed after this long
    # (seconds), so idle clients cannot hold threads forever
    timeout = 30
    server: ScoringServer
    server_version = "cxrlake-serve"

    # ------------------------------------------------------------------ plumbing
    @property
    def app(self) -> ScoringApp:
        return self.server.app

    def log_message(self, format: str, *args: object) -> None:
        if self.app.verbose:
            super().log_message(format, *args)

    def _send(
        self,
        status: int,
        body: Mapping[str, object],
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> bytes:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        return data

    def _error(
        self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False
    ) -> bytes:
        body = {"error_code": ERROR_CODES.get(status, "ERROR"), "message": message}
        return self._send(status, body, headers, close)

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host")
        if host is None or host_name(host) not in self.app.allowed_hosts:
            self._error(
                400,
                f"Host header {host!r} is not served here (start with "
                "--allowed-host NAME to accept it)",
                close=True,
            )
            return False
        return True

    def _discard_body(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_allowed():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/ping", "/health"):
            status, body = self.app.status()
            self._send(status, body)
        elif path == "/version":
            self._send(200, self.app.version())
        else:
            self._error(404, f"no route {path} (GET /ping, /health, /version; POST /invocations)")

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_allowed():
            return
        path = self.path.split("?", 1)[0]
        entity_name = None
        parts = path.strip("/").split("/")
        if path == "/invocations" or (
            len(parts) == 3 and parts[0] == "serving-endpoints" and parts[2] == "invocations"
        ):
            pass
        elif len(parts) == 3 and parts[0] == "served-models" and parts[2] == "invocations":
            entity_name = parts[1]
        else:
            self._error(404, f"no route {path} (POST /invocations)", close=True)
            return
        self._invocations(entity_name)

    def _invocations(self, entity_name: str | None) -> None:
        exchange = _Exchange(self.app.inference_log)
        ids = exchange.ids
        length = self._body_length(exchange)
        if length is None:
            return
        kind = self.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if kind.lower() not in ("application/json", ""):
            self._discard_body(length)
            exchange.finish(
                415,
                self._error(
                    415, f"Content-Type {kind!r} is not accepted: send application/json", ids
                ),
            )
            return
        router = self.app.router
        if router is None:
            self._discard_body(length)
            status, body = self.app.status()
            exchange.finish(
                503, self._error(503, f"model {body['status']}", {**ids, "Retry-After": "1"})
            )
            return
        entity: ServedModel | None = None
        if entity_name is not None:
            entity = router.by_name(entity_name)
            if entity is None:
                self._discard_body(length)
                names = ", ".join(m.entity_name for m in router.entities)
                exchange.finish(
                    404, self._error(404, f"no served model {entity_name!r} (served: {names})", ids)
                )
                return
        if not self.app.admit(length):
            self._discard_body(length)
            exchange.finish(
                503,
                self._error(
                    503,
                    "too many requests (or request bytes) in progress",
                    {**ids, "Retry-After": "1"},
                ),
            )
            return
        try:
            self._score(length, entity or router.route(), exchange)
        finally:
            self.app.release(length)

    def _body_length(self, exchange: _Exchange) -> int | None:
        """The request body's length in bytes, or None once a refusal was answered (chunked
        body, no or a malformed Content-Length, a body over `MAX_BODY_BYTES`)."""
        ids = exchange.ids
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            exchange.finish(
                411,
                self._error(
                    411,
                    "send the body with a Content-Length (chunked transfer is not accepted)",
                    ids,
                    close=True,
                ),
            )
            return None
        length_text = self.headers.get_all("Content-Length") or []
        # exactly one plain decimal number (int() would also take "+1", " 1" and "1_0")
        plain = len(length_text) == 1 and length_text[0].isascii() and length_text[0].isdigit()
        length = int(length_text[0]) if plain else -1
        if length < 0:
            exchange.finish(
                411,
                self._error(
                    411,
                    "one Content-Length header with a decimal number of bytes is required",
                    ids,
                    close=True,
                ),
            )
            return None
        if length > MAX_BODY_BYTES:
            exchange.finish(
                413,
                self._error(
                    413,
                    f"request body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte "
                    "(16 MiB) limit: send fewer images per request",
                    ids,
                    close=True,
                ),
            )
            return None
        return length

    def _score(self, length: int, entity: ServedModel, exchange: _Exchange) -> None:
        ids = exchange.ids
        try:
            body = self.rfile.read(length)
        except OSError:  # the body stopped arriving (timeout) or the client went away
            body = b""
        if len(body) != length:
            self.close_connection = True
            with contextlib.suppress(OSError):
                exchange.finish(
                    408, self._error(408, "the request body did not arrive", ids, close=True)
                )
            return
        served = entity.describe()
        headers = {**ids, "X-Served-Model-Name": entity.entity_name}
        try:
            parsed = parse_request(body)
        except ProtocolError as e:
            digest = hashlib.sha256(body).hexdigest()
            request = json.dumps({"unparsed_body_sha256": digest, "bytes": len(body)})
            exchange.finish(e.status, self._error(e.status, str(e), headers), served, request)
            return
        request = logged_request(parsed)
        good = [image for image in parsed.images if image is not None]
        try:
            scored = entity.batcher.submit(good).result(timeout=self.app.timeout_s)
        except QueueFull:
            exchange.finish(
                503,
                self._error(
                    503,
                    "too many images waiting to be scored; retry",
                    {**headers, "Retry-After": "1"},
                ),
                served,
                request,
                parsed.client_request_id,
            )
            return
        except TimeoutError:
            exchange.finish(
                504,
                self._error(504, "scoring took too long", headers),
                served,
                request,
                parsed.client_request_id,
            )
            return
        except Exception as e:  # a failure of the core for the whole batch
            exchange.finish(
                500,
                self._error(500, f"scoring failed: {e}", headers),
                served,
                request,
                parsed.client_request_id,
            )
            return
        rows = prediction_rows(
            scored.columns or entity.batcher.columns(),
            scored.rows,
            parsed.row_errors,
            entity.model_name,
            entity.model_version,
        )
        response = self._send(200, {"predictions": rows}, headers)
        exchange.finish(200, response, served, request, parsed.client_request_id)


class ScoringServer(ThreadingHTTPServer):
    """A threading HTTP server (one thread per connection, daemon threads) for `ScoringApp`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: ScoringApp) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in str(shown):
            shown = f"[{shown}]"
        return f"http://{shown}:{port}"


def load_router(
    champion: str | None,
    challenger: str | None,
    share: float,
    batcher_options: BatcherOptions,
) -> Router:
    """Load the models (files already resolved), warm each up on a small image, and build the
    router. Raises the core's exception (bad model file, ONNX Runtime missing)."""

    def serve(path: str | None, entity_name: str) -> ServedModel:
        model = Model(path)
        batcher = MicroBatcher(model, **batcher_options)
        batcher.submit([warmup_png()]).result()  # builds the ONNX Runtime session now
        return ServedModel(entity_name, model, batcher)

    first = serve(champion, CHAMPION)
    second = serve(challenger, CHALLENGER) if challenger is not None else None
    return Router(first, second, share)


def print_ready(server: ScoringServer, router: Router) -> None:
    entities = ", ".join(
        f"{m.entity_name}={m.model_name} v{m.model_version}" for m in router.entities
    )
    share = f" (challenger share {router.share:g})" if router.challenger is not None else ""
    print(f"cxrlake serve: ready on {server.url()}: {entities}{share}", file=sys.stderr, flush=True)
