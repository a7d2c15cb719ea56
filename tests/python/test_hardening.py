"""Hardening (issue 6) through the public Python API and the CLI: decompression bombs refused
without allocating, the path sandbox, FIFOs, panics inside a kernel, and clear errors for bad
arguments.

Memory and hang checks run in a subprocess: Rust allocations are invisible to tracemalloc, so
the child caps its own address space (RLIMIT_AS) a little above what it uses after a warm-up and
reports the growth of its peak RSS (ru_maxrss); a bomb that allocated would abort the child.
Subprocess timeouts here are hang detectors only (a FIFO opened blocking never returns), not
performance thresholds.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from io import BytesIO
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

import cxrlake
from cxrlake.exceptions import InvalidArgumentError, ModelError, SandboxError

HANG_TIMEOUT_S = 300  # far above any normal run: only a blocked open/read ever reaches it


# ---------------------------------------------------------------------------------------------
# Inputs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_bomb(width: int, height: int, color: int = 0) -> bytes:
    """A well-formed PNG announcing ``width x height`` (8-bit) with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    channels = {0: 1, 2: 3, 6: 4}[color]
    # Zero scanlines: all of them for an honest small image, a few KB for a bomb.
    idat = zlib.compress(b"\x00" * min(height * (1 + width * channels), 4096))
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def small_jpeg(mode: str = "L", size: tuple[int, int] = (32, 24)) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buf = BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def jpeg_header_bomb(width: int, height: int, mode: str = "L") -> bytes:
    """A real JPEG whose SOF0 is patched to announce ``width x height``."""
    data = bytearray(small_jpeg(mode))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def run_python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Runs ``code`` in a fresh interpreter; returns the JSON it prints on its last line."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Decompression bombs

BOMB_CHILD = """
    import json, resource, sys
    import cxrlake

    bombs = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
    warm = bytes.fromhex({warm!r})

    # Warm up every kernel on a small image: thread pools, decoder handles, the ONNX session.
    cxrlake.decode([warm], threads=1)
    cxrlake.features([warm], threads=1, embedding=False)
    cxrlake.predict([warm], threads=1)

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    # From here on, any attempt to reserve more than 256 MiB more address space fails (and a
    # failed Rust allocation aborts the process): a 60000x60000 buffer is 3.6 GB.
    headroom = 256 * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + headroom, hard))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    errors = {{}}
    for kernel in ("decode", "features", "predict"):
        fn = getattr(cxrlake, kernel)
        kwargs = {{"embedding": False}} if kernel == "features" else {{}}
        errors[kernel] = fn(bombs, threads=1, **kwargs).column("error").to_pylist()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"errors": errors, "rss_growth_kib": after - before}}))
"""


def test_bomb_headers_are_refused_without_allocating():
    bombs = [
        png_header_bomb(60_000, 60_000),
        png_header_bomb(60_000, 60_000, color=6),
        jpeg_header_bomb(65_000, 65_000),
        jpeg_header_bomb(65_000, 65_000, mode="RGB"),
    ]
    code = BOMB_CHILD.format(warm=small_jpeg().hex())
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=json.dumps([b.hex() for b in bombs]),
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [
        "image 60000x60000 exceeds 100 megapixel limit",
        "image 60000x60000 exceeds 100 megapixel limit",
        "image 65000x65000 exceeds 100 megapixel limit",
        "image 65000x65000 exceeds 100 megapixel limit",
    ]
    for kernel in ("decode", "features", "predict"):
        assert result["errors"][kernel] == expected, kernel
    # "A few MB": refusing 12 bomb rows must not grow the peak RSS by more than 8 MiB.
    assert result["rss_growth_kib"] < 8 * 1024, result


def test_bomb_inputs_decode_when_their_size_is_honest():
    # Guards the test above: the refusals come from the announced size, not a broken file.
    batch = cxrlake.decode([png_header_bomb(8, 8), small_jpeg()], threads=1)
    assert batch.column("error").to_pylist() == [None, None]
    assert batch.column("width").to_pylist() == [8, 32]


def test_pixel_and_file_limits_are_configurable_and_named(monkeypatch):
    jpeg = small_jpeg(size=(100, 50))
    batch = cxrlake.decode([jpeg], max_pixels=4_000)
    assert batch.column("error").to_pylist() == ["image 100x50 exceeds 0.004 megapixel limit"]
    batch = cxrlake.decode([jpeg], max_file_bytes=100)
    assert batch.column("error").to_pylist()[0].startswith("image exceeds ")
    monkeypatch.setenv("CXRLAKE_MAX_PIXELS", "4000")
    batch = cxrlake.decode([jpeg])
    assert batch.column("error").to_pylist() == ["image 100x50 exceeds 0.004 megapixel limit"]
    monkeypatch.setenv("CXRLAKE_MAX_PIXELS", "lots")
    with pytest.raises(InvalidArgumentError, match="CXRLAKE_MAX_PIXELS"):
        cxrlake.decode([jpeg])


# ---------------------------------------------------------------------------------------------
# Path sandbox


@pytest.fixture()
def sandbox(tmp_path: Path) -> Path:
    """``tmp/root`` holding good.jpeg, sub/, a FIFO and symlinks; ``tmp/outside.jpeg`` beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "good.jpeg").write_bytes(small_jpeg())
    (tmp_path / "outside.jpeg").write_bytes(small_jpeg())
    (root / "out_link.jpeg").symlink_to(tmp_path / "outside.jpeg")
    (root / "etc").symlink_to("/etc")
    (root / "sub" / "in_link.jpeg").symlink_to(root / "good.jpeg")
    os.mkfifo(root / "sub" / "fifo.jpeg")
    return root


def _predict_errors(paths: list[str], root: Path) -> list[str | None]:
    batch = cxrlake.predict(paths, roots=[root], threads=1)
    errors = batch.column("error").to_pylist()
    for probability, error in zip(batch.column("probability").to_pylist(), errors, strict=True):
        assert (probability is None) == (error is not None)
    return errors


def test_files_inside_the_root_are_scored(sandbox: Path):
    paths = [sandbox / "good.jpeg", sandbox / "sub" / "in_link.jpeg", sandbox / "sub/../good.jpeg"]
    assert _predict_errors([str(p) for p in paths], sandbox) == [None, None, None]


def test_etc_passwd_is_refused_by_the_sandbox(sandbox: Path):
    assert _predict_errors(["/etc/passwd"], sandbox) == ["outside sandbox roots: /etc/passwd"]


def test_dotdot_is_refused_by_the_sandbox(sandbox: Path):
    escape = str(sandbox / "sub" / ".." / ".." / "outside.jpeg")
    assert _predict_errors([escape], sandbox) == [f"outside sandbox roots: {escape}"]


def test_relative_dotdot_to_a_missing_file_is_refused_by_the_sandbox(sandbox: Path, monkeypatch):
    # The issue's `predict('../../x.jpeg')`: outside the root whether or not the file exists, so
    # the answer must not reveal which files exist outside the roots.
    monkeypatch.chdir(sandbox / "sub")
    assert _predict_errors(["../../x.jpeg"], sandbox) == ["outside sandbox roots: ../../x.jpeg"]
    assert _predict_errors(["/nonexistent/secret.jpeg"], sandbox) == [
        "outside sandbox roots: /nonexistent/secret.jpeg"
    ]
    # Inside the root, a missing file is just missing.
    missing = str(sandbox / "missing.jpeg")
    assert _predict_errors([missing], sandbox) == [f"file not found: {missing}"]


def test_symlinks_out_of_the_root_are_refused(sandbox: Path):
    link = str(sandbox / "out_link.jpeg")
    passwd = str(sandbox / "etc" / "passwd")
    assert _predict_errors([link, passwd], sandbox) == [
        f"outside sandbox roots: {link}",
        f"outside sandbox roots: {passwd}",
    ]


def test_roots_from_the_environment(sandbox: Path):
    result = run_python(
        """
        import json, cxrlake
        batch = cxrlake.decode(["/etc/passwd"])
        print(json.dumps(batch.column("error").to_pylist()))
        """,
        env={"CXRLAKE_ALLOWED_ROOTS": f"{sandbox}{os.pathsep}{sandbox / 'sub'}"},
    )
    assert result == ["outside sandbox roots: /etc/passwd"]


def test_a_missing_root_is_a_sandbox_error(tmp_path: Path):
    with pytest.raises(SandboxError, match="nonexistent"):
        cxrlake.decode(["/etc/passwd"], roots=[tmp_path / "nonexistent"])


def test_fifo_does_not_hang_any_kernel(sandbox: Path):
    # In a child process: if a FIFO were opened blocking, the child would hang (no writer ever
    # comes) and the timeout would report it instead of hanging the test session.
    fifo = str(sandbox / "sub" / "fifo.jpeg")
    result = run_python(
        f"""
        import json, cxrlake
        paths = [{fifo!r}, {str(sandbox / "good.jpeg")!r}]
        out = {{
            "decode": cxrlake.decode(paths).column("error").to_pylist(),
            "features": cxrlake.features(paths, embedding=False).column("error").to_pylist(),
            "predict": cxrlake.predict(paths).column("error").to_pylist(),
            "preprocess": cxrlake.preprocess(paths)[1].to_pylist(),
        }}
        print(json.dumps(out))
        """,
        env={"CXRLAKE_ALLOWED_ROOTS": str(sandbox)},
    )
    for kernel, errors in result.items():
        assert errors == [f"not a regular file: {fifo}", None], kernel


def test_cli_on_a_folder_with_a_fifo_does_not_hang(sandbox: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", "predict", str(sandbox / "sub")],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert by_name["in_link.jpeg"]["error"] is None
    fifo = by_name.get("fifo.jpeg")
    assert fifo is None or fifo["error"].startswith("not a regular file"), fifo


# ---------------------------------------------------------------------------------------------
# Panics inside a kernel


def test_a_panic_inside_a_kernel_becomes_a_row_error():
    # CXRLAKE_TEST_PANIC_MARKER makes the core panic on a row whose bytes equal the marker (a
    # test failpoint, see src/core/failpoint.rs). The panic must stay in its row, on a worker
    # thread of the Rust pool, and the Python process must carry on.
    marker = "cxrlake test panic"
    result = run_python(
        f"""
        import json, cxrlake
        images = [{marker.encode()!r}, bytes.fromhex({small_jpeg().hex()!r})] * 4
        out = {{}}
        for kernel in ("decode", "features", "predict"):
            batch = getattr(cxrlake, kernel)(images, threads=2)
            out[kernel] = batch.column("error").to_pylist()
        out["preprocess"] = cxrlake.preprocess(images, threads=2)[1].to_pylist()
        out["after"] = cxrlake.decode([bytes.fromhex({small_jpeg().hex()!r})]).num_rows
        print(json.dumps(out))
        """,
        env={"CXRLAKE_TEST_PANIC_MARKER": marker},
    )
    assert result.pop("after") == 1
    for kernel, errors in result.items():
        assert errors[1::2] == [None] * 4, kernel
        assert all(e is not None and e.startswith("internal error: ") for e in errors[0::2]), (
            kernel,
            errors,
        )


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cxrlake.predict("/etc/passwd"), "wrap a single image in a list"),
        (lambda: cxrlake.predict(123), "not int"),
        (lambda: cxrlake.predict([1, 2]), "not int"),
        (lambda: cxrlake.predict(["a.jpeg", b"\xff\xd8"]), "mixes paths and bytes"),
        (lambda: cxrlake.decode(pa.array([1, 2])), "got int64"),
        (lambda: cxrlake.decode([b"x"], threads=0), "threads"),
        (lambda: cxrlake.decode([b"x"], threads="2"), "threads"),
        (lambda: cxrlake.decode([b"x"], max_pixels=-1), "max_pixels"),
        (lambda: cxrlake.decode([b"x"], max_file_bytes=0), "max_file_bytes"),
    ],
)
def test_bad_arguments_raise_clear_invalid_argument_errors(call, message):
    with pytest.raises(InvalidArgumentError, match=message):
        call()


def test_missing_model_is_a_model_error(tmp_path: Path):
    with pytest.raises(ModelError, match="nonexistent.onnx"):
        cxrlake.predict([small_jpeg()], model=tmp_path / "nonexistent.onnx")


def test_bad_thread_environment_is_named(monkeypatch):
    monkeypatch.setenv("CXRLAKE_NUM_THREADS", "zero")
    with pytest.raises(InvalidArgumentError, match="CXRLAKE_NUM_THREADS"):
        cxrlake.decode([small_jpeg()])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "usage"),
        (["predict"], 2, "required"),
        (["predict", "--threads", "0", "x.jpeg"], 2, "positive integer"),
        (["predict", "--format", "xml", "x.jpeg"], 2, "invalid choice"),
        (["no-such-command"], 2, "invalid choice"),
        (["predict", "--model", "/nonexistent/model.onnx", "x.jpeg"], 3, "/nonexistent/model.onnx"),
    ],
)
def test_cli_exit_codes(args, code, message):
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert message in proc.stderr


def test_cli_exits_zero_when_rows_fail(tmp_path: Path):
    (tmp_path / "bad.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "good.jpeg").write_bytes(small_jpeg())
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", "predict", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    errors = {Path(r["path"]).name: r["error"] for r in map(json.loads, proc.stdout.splitlines())}
    assert errors["good.jpeg"] is None
    assert errors["bad.jpeg"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 0}, "threads must be a positive integer"),
        ({"threads": "4"}, "threads must be a positive integer"),
        ({"flavor": "scala"}, "use 'auto', 'arrow' or 'pandas'"),
        ({"name": "predict; DROP TABLE x"}, "name must be a SQL identifier"),
        ({"features_name": ""}, "features_name must be a SQL identifier"),
        ({"model": 42}, "model must be None, a path or a cxrlake.Model"),
    ],
)
def test_spark_registration_rejects_bad_arguments_on_the_driver(kwargs, message):
    from cxrlake.spark import udfs

    class NoSpark:
        """Registration must fail before touching the session."""

        @property
        def udf(self):
            raise AssertionError("the session was used despite a bad argument")

    with pytest.raises(InvalidArgumentError, match=message):
        udfs.register(NoSpark(), **kwargs)


# ---------------------------------------------------------------------------------------------
# Second pass: decoder memory and work bounds, messages, PNG orientation after the image data


def png_iccp_bomb(inflated_bytes: int = 256 << 20, size: int = 256) -> bytes:
    """A valid ``size x size`` gray PNG whose iCCP profile inflates to ``inflated_bytes``."""
    packer = zlib.compressobj(9)
    block = bytes(1 << 20)
    profile = b"".join(packer.compress(block) for _ in range(inflated_bytes >> 20)) + packer.flush()
    iccp = b"bomb\x00\x00" + profile  # name, NUL, compression method 0, zlib stream
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(size * (1 + size)))
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", ihdr),
            _chunk(b"iCCP", iccp),
            _chunk(b"IDAT", idat),
            _chunk(b"IEND", b""),
        ]
    )


ICCP_BOMB_CHILD = """
    import json, resource, sys
    import cxrlake

    bomb = bytes.fromhex(sys.stdin.read())
    cxrlake.decode([bomb[:0] + {warm!r}], threads=8)  # warm up the 8-thread pool
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = cxrlake.decode([bomb] * 8, threads=8)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"errors": batch.column("error").to_pylist(),
                      "widths": batch.column("width").to_pylist(),
                      "rss_growth_kib": after - before}}))
"""


def png_memory_bound(encoded: int, width: int, height: int) -> int:
    """The per-image bound documented in docs/security.md (src/core/decode.rs png_memory_bound)."""
    return 2 * encoded + 13 * width * height + height + (1 << 20)


def test_png_iccp_bomb_stays_within_the_documented_bound_at_8_threads():
    bomb = png_iccp_bomb()
    assert len(bomb) < 1 << 20  # under a megabyte, inflating to 256 MiB
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ICCP_BOMB_CHILD.format(warm=small_jpeg()))],
        input=bomb.hex(),
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The colour profile is not needed for grayscale: the image decodes, the profile is skipped.
    assert result["errors"] == [None] * 8 and result["widths"] == [256] * 8
    bound_kib = 8 * png_memory_bound(len(bomb), 256, 256) // 1024
    # The old decoder inflated every profile: 8 x 256 MiB.
    assert result["rss_growth_kib"] <= bound_kib, (result["rss_growth_kib"], bound_kib)


def progressive_jpeg(size: int, scans: int) -> bytes:
    """A progressive gray JPEG whose last scan is repeated until it has ``scans`` scans."""
    buf = BytesIO()
    Image.linear_gradient("L").resize((size, size)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    last_scan = data[starts[-1] : -2]  # SOS .. entropy data, without EOI
    return data[:-2] + last_scan * max(scans - len(starts), 0) + b"\xff\xd9"


def test_progressive_scan_budget_refuses_scan_bombs_with_a_clear_error():
    # 2000x2000 is 4 megapixels: 2e8 / 4e6 = 50 scans allowed (the old fixed limit was 500).
    bomb = progressive_jpeg(2000, 60)
    ordinary = progressive_jpeg(2000, 0)  # the encoder's own scans (about 10)
    batch = cxrlake.decode([bomb, ordinary], threads=1)
    errors = batch.column("error").to_pylist()
    assert errors[0] == (
        "JPEG has more than 50 progressive scans, the work limit for a 2000x2000 image "
        "(2e8 pixel-scans, at least 16 scans)"
    )
    assert errors[1] is None


def test_huge_thread_counts_are_invalid_arguments_not_overflow_errors():
    for threads in (2**64, 2**200):
        with pytest.raises(InvalidArgumentError, match="threads"):
            cxrlake.decode([small_jpeg()], threads=threads)
    with pytest.raises(InvalidArgumentError, match="max_pixels"):
        cxrlake.decode([small_jpeg()], max_pixels=2**64)


def test_tiny_limits_are_printed_without_rounding_to_zero():
    batch = cxrlake.decode([small_jpeg()], max_file_bytes=10)
    assert batch.column("error").to_pylist() == ["image exceeds 10 byte limit"]
    batch = cxrlake.decode([small_jpeg()], max_pixels=10)
    assert batch.column("error").to_pylist() == ["image 32x24 exceeds 10 pixel limit"]


@pytest.mark.parametrize("data", [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"])
def test_a_jpeg_cut_before_its_frame_header_is_truncated(data):
    assert cxrlake.decode([data]).column("error").to_pylist() == ["truncated JPEG"]


def png_with_exif_after_idat(orientation: int) -> bytes:
    image = Image.linear_gradient("L").resize((40, 30))
    buf = BytesIO()
    image.save(buf, "PNG")
    png = buf.getvalue()
    # Big-endian TIFF, IFD0 at 8 with one entry: Orientation (0x0112), SHORT, count 1.
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01"
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00"
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + _chunk(b"eXIf", tiff) + png[iend:]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_png_exif_after_the_image_data_is_applied_like_pil(orientation):
    from PIL import ImageOps

    data = png_with_exif_after_idat(orientation)
    with Image.open(BytesIO(data)) as image:
        image.load()
        expected = ImageOps.exif_transpose(image).convert("L")
    batch = cxrlake.decode([data])
    assert batch.column("error").to_pylist() == [None]
    assert (batch.column("width")[0].as_py(), batch.column("height")[0].as_py()) == expected.size
    assert batch.column("pixels")[0].as_py() == expected.tobytes()
