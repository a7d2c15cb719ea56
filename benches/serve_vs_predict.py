"""`cxrlake serve` under concurrent clients next to `cxrlake predict`, one run side by side.

``--clients`` threads (default 8) each hold one keep-alive HTTP connection to a fresh
``cxrlake serve`` and send one full-resolution film per request (``dataframe_split``, base64,
bodies encoded before the clock starts) until every file of ``--images`` has been scored once.
``cxrlake predict`` scores the same files as a whole process before and after the server run; the
server's images/s is reported as a ratio of predict's (mean of the two runs, and the slower one),
with the p50 / p99 request latency, the mean images per core call (micro-batching), the
server's peak RSS, and a check that every answer equals predict's record for that file.

    python benches/serve_vs_predict.py --images ../shared/data/chest_xray_fullres --clients 8

The clients run in this process (threads; the server is another process), so they compete with
the server for the same cores, as clients on the same machine would.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "cxrlake.cli"]
FIELDS = ("probability", "predicted_label", "label_name", "error")


def run_predict(images: Path) -> tuple[float, dict[str, dict]]:
    """Wall seconds of `cxrlake predict` over ``images`` (a folder or one file) and its records
    by path."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run(
            [*CLI, "predict", "--no-progress", str(images)],
            stdout=subprocess.PIPE,
            stderr=err,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"cxrlake predict failed:\n{err.read().decode()[-2000:]}")
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    return elapsed, {os.path.abspath(r["path"]): r for r in records}


class Server:
    def __init__(self, extra: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", "0", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            sys.exit(f"cxrlake serve did not start: {line}{self.proc.stderr.read()}")
        self.port = int(m.group(1))
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        deadline = time.monotonic() + 120
        while self.get("/ping")[0] != 200:
            if time.monotonic() > deadline:
                sys.exit("cxrlake serve did not become ready")
            time.sleep(0.05)

    def get(self, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def drive(port: int, bodies: list[tuple[str, bytes]], clients: int) -> tuple[float, list, dict]:
    """Send every body once from ``clients`` threads; (wall seconds, latencies, answers)."""
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    latencies: list[float] = []
    answers: dict[str, dict] = {}
    failures: list[str] = []
    start_gate = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start_gate.wait()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            path, body = bodies[i]
            t0 = time.perf_counter()
            conn.request(
                "POST", "/invocations", body=body, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - t0
            with lock:
                if resp.status != 200:
                    failures.append(f"{resp.status} {data[:200]!r}")
                    continue
                latencies.append(elapsed)
                answers[path] = json.loads(data)["predictions"][0]
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return wall, latencies, answers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra `cxrlake serve` argument (repeatable), e.g. --max-batch=8",
    )
    args = parser.parse_args()

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    bodies = []
    for path in files:
        content = base64.b64encode(path.read_bytes()).decode()
        payload = {"dataframe_split": {"columns": ["content"], "data": [[content]]}}
        bodies.append((os.path.abspath(path), json.dumps(payload).encode()))
    mean_body = statistics.mean(len(b) for _, b in bodies) / 1e6

    # the fixed cost of a `cxrlake predict` process (interpreter, imports, model load, one film)
    t_one, _ = run_predict(files[0])
    t_before, records = run_predict(args.images)
    server = Server(args.serve_arg)
    try:
        drive(server.port, bodies[: args.clients], args.clients)  # warm connections
        before = server.get("/version")[1]["batching"]
        wall, latencies, answers = drive(server.port, bodies, args.clients)
        after = server.get("/version")[1]["batching"]
        rss = server.peak_rss_mib()
    finally:
        server.stop()
    t_after, _ = run_predict(args.images)

    n = len(files)
    calls = after["core_calls"] - before["core_calls"]
    scored = after["images"] - before["images"]
    mismatched = [
        p
        for p, row in answers.items()
        if {k: row[k] for k in FIELDS} != {k: records[p][k] for k in FIELDS}
    ]
    serve_rate = n / wall
    predict_rates = (n / t_before, n / t_after)
    mean_rate = statistics.mean(predict_rates)
    print(
        f"images: {n} films under {args.images} (mean request body {mean_body:.2f} MB), "
        f"{args.clients} concurrent clients, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"cxrlake predict (process)   before {t_before:6.2f} s = {predict_rates[0]:6.1f} img/s,"
        f" after {t_after:6.2f} s = {predict_rates[1]:6.1f} img/s"
    )
    print(
        f"cxrlake serve               {wall:6.2f} s = {serve_rate:6.1f} img/s, "
        f"{scored / max(calls, 1):.1f} images per core call ({calls} calls), "
        f"peak RSS {rss:.0f} MiB"
    )
    print(
        f"latency per request         p50 {1000 * percentile(latencies, 0.5):.0f} ms, "
        f"p99 {1000 * percentile(latencies, 0.99):.0f} ms"
    )
    print(
        f"serve / predict             {serve_rate / mean_rate:.2f}x (vs the mean of both runs), "
        f"{serve_rate / min(predict_rates):.2f}x (vs the slower), "
        f"{serve_rate / max(predict_rates):.2f}x (vs the faster)"
    )
    # stricter: predict without its process start-up (one film's run subtracted)
    steady = statistics.mean(n / max(t - t_one, 1e-9) for t in (t_before, t_after))
    print(
        f"serve / predict minus start-up ({t_one:.2f} s for one film): "
        f"{serve_rate / steady:.2f}x ({steady:.1f} img/s)"
    )
    print(f"answers equal to predict's  {len(answers) - len(mismatched)} / {len(answers)}")
    if mismatched:
        sys.exit(f"answers differ from cxrlake predict, e.g. {mismatched[0]}")


if __name__ == "__main__":
    main()
