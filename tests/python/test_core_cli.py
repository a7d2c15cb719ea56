"""The ``cxrlake predict`` command on the real images and on a directory with bad files."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cxrlake


def run_cli(
    *args: str, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def one_error_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The single ``cxrlake <command>: error: ...`` line of a failed run (no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"cxrlake {command}: error: "), result.stderr
    return lines[0]


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_predict_scores_every_fullres_image(shared_data, fullres_paths):
    result = run_cli("predict", "--threads", "2", str(shared_data / "chest_xray_fullres"))
    assert result.returncode == 0, result.stderr
    rows = records(result.stdout)
    assert sorted(r["path"] for r in rows) == sorted(fullres_paths)
    model = cxrlake.Model()
    for row in rows:
        assert set(row) == {
            "path",
            "probability",
            "predicted_label",
            "label_name",
            "ood_score",
            "out_of_distribution",
            "ood_reason",
            "error",
        }
        assert row["error"] is None, row
        assert 0.0 <= row["probability"] <= 1.0
        assert row["predicted_label"] == int(row["probability"] >= model.threshold)
        assert row["label_name"] == model.labels[row["predicted_label"]]


@pytest.fixture
def mixed_dir(tmp_path: Path, fullres_paths) -> Path:
    good = [Path(p) for p in fullres_paths[:3]]
    (tmp_path / "nested").mkdir()
    for i, path in enumerate(good):
        (tmp_path / ("nested" if i == 2 else ".") / path.name).write_bytes(path.read_bytes())
    data = good[0].read_bytes()
    (tmp_path / "corrupt.jpeg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "readme.png").write_text("this is not an image\n")
    (tmp_path / "notes.txt").write_text("skipped: not an image extension\n")
    return tmp_path


def test_predict_reports_one_error_per_bad_file(mixed_dir: Path):
    result = run_cli("predict", str(mixed_dir))
    assert result.returncode == 0, result.stderr
    by_name = {Path(r["path"]).name: r for r in records(result.stdout)}
    assert len(by_name) == 6  # 3 good + 3 bad; notes.txt is not an image file name
    errors = {name: row["error"] for name, row in by_name.items() if row["error"]}
    assert errors == {
        "corrupt.jpeg": "truncated JPEG",
        "empty.jpg": f"empty image data: {mixed_dir / 'empty.jpg'}",
        "readme.png": "not an image (unknown format)",
    }
    # The summary and what was skipped, on stderr (stdout stays machine-readable).
    assert "scored 3, 3 errors, 1 skipped" in result.stderr
    assert "notes.txt" in result.stderr
    assert "cxrlake predict: 6/6" in result.stderr  # progress as log lines when not a terminal
    for name, row in by_name.items():
        assert (row["probability"] is None) == (name in errors)


def test_explicit_files_are_scored_whatever_their_extension(mixed_dir: Path):
    missing = mixed_dir / "missing.jpeg"
    result = run_cli("predict", "--format", "csv", str(mixed_dir / "notes.txt"), str(missing))
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["error"] for r in rows] == [
        "not an image (unknown format)",
        f"file not found: {missing}",
    ]
    assert rows[0]["probability"] == ""
    # A named path that does not exist fails the command, after every row is written.
    assert result.returncode == 1
    assert str(missing) in one_error_line(result, "predict")
    assert "scored 0, 2 errors, 0 skipped" in result.stderr


def test_nothing_to_score_is_a_failure(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("predict", str(empty))
    assert result.returncode == 1 and result.stdout == ""
    assert "no images found" in one_error_line(result, "predict")
    assert "scored 0, 0 errors, 0 skipped" in result.stderr
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("x")
    (others / "IM0.dcm").write_bytes(b"\0" * 128 + b"DICM")  # a DICOM file without a pixel
    result = run_cli("predict", str(others))
    assert result.returncode == 1
    assert "no image could be scored" in one_error_line(result, "predict")
    assert "scored 0, 1 errors, 1 skipped" in result.stderr
    assert "skipped 1 file that is not an image" in result.stderr


def test_explain_writes_an_overlay_and_a_json_line_per_film(mixed_dir: Path, tmp_path: Path):
    from PIL import Image

    out = tmp_path / "maps"
    # the same file name twice (a named file and the folder's copy): two overlays
    twin = mixed_dir / Path(sorted(mixed_dir.glob("*.jpeg"))[0]).name
    result = run_cli("explain", "--out", str(out), "--size", "96", str(mixed_dir), str(twin))
    assert result.returncode == 0, result.stderr
    # the same filter and summary as predict: 4 good films (one twice), 3 bad, notes.txt skipped
    assert "explained 4, 3 errors, 1 skipped" in result.stderr and "notes.txt" in result.stderr
    lines = records(result.stdout)
    assert lines == records((out / "explain.jsonl").read_text())
    assert len(lines) == 7
    model = cxrlake.Model()
    good = [r for r in lines if r["error"] is None]
    assert len({r["overlay"] for r in good}) == 4
    assert sorted(os.listdir(out)) == sorted(
        [Path(r["overlay"]).name for r in good] + ["explain.jsonl"]
    )
    predicted = {r["path"]: r for r in records(run_cli("predict", str(mixed_dir)).stdout)}
    for row in good:
        with Image.open(row["overlay"]) as picture:
            assert max(picture.size) >= 96 and picture.mode == "RGB"
        assert row["probability"] == pytest.approx(predicted[row["path"]]["probability"], abs=1e-6)
        assert row["label_name"] == model.labels[row["predicted_label"]]
        fine, coarse = row["heatmap"], row["model_heatmap"]
        assert (fine["rows"], fine["cols"]) == (4 * coarse["rows"], 4 * coarse["cols"])
        assert len(fine["values"]) == fine["rows"] * fine["cols"]
        region = row["hottest_region"]
        left, top, right, bottom = region["box"]
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert region["mean"] <= max(fine["values"]) + 1e-9
    bad = {Path(r["path"]).name: r for r in lines if r["error"]}
    assert set(bad) == {"corrupt.jpeg", "empty.jpg", "readme.png"}
    assert all(r["overlay"] is None and r["heatmap"] is None for r in bad.values())
    missing = run_cli("explain", "--out", str(out), str(tmp_path / "nope.jpeg"))
    assert missing.returncode == 1 and "nope.jpeg" in one_error_line(missing, "explain")


def test_csv_output_has_the_documented_header(fullres_paths):
    result = run_cli("predict", "--format", "csv", fullres_paths[0])
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header == (
        "path,probability,predicted_label,label_name,ood_score,out_of_distribution,ood_reason,error"
    )


def test_missing_model_exits_3_with_a_message(tmp_path: Path, fullres_paths):
    result = run_cli("predict", "--model", str(tmp_path / "absent.onnx"), fullres_paths[0])
    assert result.returncode == 3
    assert "model file not found" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [[], ["predict"], ["predict", "--threads", "0", "x.jpeg"], ["predict", "--format", "xml", "x"]],
    ids=["no-command", "no-paths", "zero-threads", "bad-format"],
)
def test_usage_errors_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr


def test_help_documents_the_exit_codes():
    result = run_cli("predict", "--help")
    assert result.returncode == 0
    for text in ("--model", "--threads", "--format", "exit codes", "model missing", "130"):
        assert text in result.stdout


def _all_parsers():
    import argparse

    from cxrlake.cli import build_parser

    pending = [("", build_parser())]
    while pending:
        name, parser = pending.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {n}".strip(), p) for n, p in action.choices.items()]


def test_every_command_has_version_debug_help_defaults_and_exit_codes():
    import argparse

    names = []
    for name, parser in _all_parsers():
        names.append(name)
        options = {s for a in parser._actions for s in a.option_strings}
        assert {"--version", "--debug", "--help"} <= options, name
        assert parser.description or not name, f"{name} has no description"
        assert "exit codes" in parser.format_help(), name
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if name.split(" ")[0] in ("", "predict", "sql", "report", "maintain", "pipeline"):
                assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, f"{name} {action.option_strings[0]}"
    assert {"predict", "sql", "report", "maintain", "pipeline run"} <= set(names)
    for name in ("", "sql", "pipeline run"):
        result = run_cli(*name.split(), "--version")
        assert result.returncode == 0 and result.stdout.startswith("cxrlake "), name


def test_bad_environment_variables_are_one_line(fullres_paths):
    result = run_cli("predict", fullres_paths[0], env={"CXRLAKE_NUM_THREADS": "abc"})
    assert result.returncode == 2
    assert "CXRLAKE_NUM_THREADS" in one_error_line(result, "predict")
    result = run_cli("predict", fullres_paths[0], env={"CXRLAKE_MAX_PIXELS": "0"})
    assert result.returncode == 2
    assert "CXRLAKE_MAX_PIXELS" in one_error_line(result, "predict")
    result = run_cli("predict", fullres_paths[0], env={"CXRLAKE_ALLOWED_ROOTS": ":"})
    assert result.returncode == 1
    assert "CXRLAKE_ALLOWED_ROOTS" in one_error_line(result, "predict")


def test_debug_shows_the_trace(tmp_path: Path):
    quiet = run_cli("sql", "--lakehouse", str(tmp_path), "SELECT 1")
    assert quiet.returncode == 1 and "no lakehouse" in one_error_line(quiet, "sql")
    for args in (["--debug", "sql"], ["sql", "--debug"]):
        loud = run_cli(*args, "--lakehouse", str(tmp_path), "SELECT 1")
        assert loud.returncode == 1
        assert "Traceback" in loud.stderr and "cxrlake sql: error: no lakehouse" in loud.stderr


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path):
    """SIGINT while the command waits (here: for SQL from a FIFO) ends it with 130."""
    fifo = tmp_path / "wait.sql"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrlake.cli", "sql", "--lakehouse", str(tmp_path), "-f", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until the command blocks opening the FIFO, i.e. Python's SIGINT handler is set.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
            if "fifo" in wchan or "pipe" in wchan:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().endswith("cxrlake sql: interrupted")


def test_os_errors_buried_in_engine_messages_are_named_first(tmp_path: Path):
    """delta-rs buries the OS error deep in its message: the Delta write wraps it into a typed
    `LakehouseWriteError` that names it first, and the command line maps that error by class."""
    from deltalake.exceptions import DeltaError

    from cxrlake.cli.errors import describe_error
    from cxrlake.exceptions import CxrlakeError
    from cxrlake.lakehouse.storage import Lakehouse, LakehouseWriteError
    from cxrlake.medallion import schemas

    lakehouse = Lakehouse(tmp_path)
    with pytest.raises(LakehouseWriteError) as raised, lakehouse._writing(schemas.BRONZE):
        raise DeltaError(
            "Failed to parse parquet: External: Generic LocalFileSystem error: Unable to copy "
            "data to file: No space left on device (os error 28)\nat some/rust/frame.rs:1"
        )
    error = raised.value
    assert isinstance(error, CxrlakeError) and isinstance(error, OSError) and error.errno == 28
    message, code = describe_error(error)
    assert message.startswith("disk full: cannot write bronze") and "\n" not in message
    assert code == 1
    message, code = describe_error(OSError(30, "Read-only file system", "/lh/_cxrlake.lock"))
    assert message == "/lh/_cxrlake.lock: Read-only file system" and code == 1


def test_every_error_class_is_a_cxrlake_error_and_maps_to_its_exit_code():
    """One hierarchy: the errors the modules raise are `CxrlakeError`s (and keep their builtin
    base), and `cxrlake.cli.errors.EXIT_CODES` maps them by class."""
    from cxrlake.calibration_service import CalibrationError
    from cxrlake.cli.errors import CommandError, ContextError, UsageError, describe_error
    from cxrlake.exceptions import CxrlakeError, InvalidArgumentError, ModelError
    from cxrlake.lakehouse.sql import LakehouseNotFoundError
    from cxrlake.lakehouse.storage import LakehouseWriteError
    from cxrlake.review.tables import ReviewError
    from cxrlake.spark.deployment import DeploymentError
    from cxrlake.spark.jobs import JobParameterError
    from cxrlake.spark.sql_files import SqlParameterError

    builtin_base = {
        CalibrationError: ValueError,
        ReviewError: ValueError,
        JobParameterError: ValueError,
        SqlParameterError: ValueError,
        DeploymentError: ValueError,
        LakehouseNotFoundError: FileNotFoundError,
        LakehouseWriteError: OSError,
    }
    from cxrlake.serving.batcher import QueueFull
    from cxrlake.serving.protocol import ProtocolError
    from cxrlake.spark.local_runtime import LocalRuntimeError
    from cxrlake.training.ood import OodFitError

    builtin_base |= {ProtocolError: ValueError, QueueFull: RuntimeError, OodFitError: Exception}
    builtin_base[LocalRuntimeError] = RuntimeError
    for cls, base in builtin_base.items():
        assert issubclass(cls, CxrlakeError) and issubclass(cls, base), cls
    assert issubclass(CommandError, CxrlakeError)
    assert describe_error(CalibrationError("one class only")) == ("one class only", 1)
    assert describe_error(LakehouseNotFoundError("no lakehouse at x")) == ("no lakehouse at x", 1)
    assert describe_error(UsageError("--data is required")) == ("--data is required", 2)
    assert describe_error(ModelError("no model")) == ("no model", 3)
    assert describe_error(InvalidArgumentError("bad threads")) == ("bad threads", 2)
    # an error told with what the command was doing exits as the error that caused it
    for cause, code in ((ModelError("bad file"), 3), (OSError(5, "I/O error"), 1)):
        try:
            raise ContextError("cannot load the model") from cause
        except ContextError as error:
            assert describe_error(error) == (f"cannot load the model: {_text(cause)}", code)


def _text(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) else str(error)


def test_train_without_data_is_a_usage_error_through_the_one_handler():
    result = run_cli("train", "--epochs", "1")
    assert result.returncode == 2, result.stderr
    assert one_error_line(result, "train") == "cxrlake train: error: --data is required"


def test_a_missing_optional_package_names_the_extra_that_installs_it(tmp_path: Path):
    """The wheel's runtime is pyarrow + numpy + onnxruntime; the local engine is an extra. A
    command run without it says which extra to install instead of a bare ModuleNotFoundError."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    # A meta-path finder that hides duckdb/deltalake, as on an install without [local].
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('duckdb', 'deltalake'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    source = tmp_path / "src"
    source.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrlake.cli",
            "pipeline",
            "run",
            "--source",
            str(source),
            "--lakehouse",
            str(tmp_path / "lh"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "pip install 'cxrlake[local]'" in lines[0] and lines[0].startswith("cxrlake pipeline")


def _imported_names(source: Path) -> set[str]:
    """Every module (and ``module.name``) ``source`` imports, inside functions too."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_every_command_lives_in_the_cli_package_and_imports_no_other_command():
    """`cxrlake.cli` builds its parser from the command modules of its package: no module
    outside the package imports it, and a command module imports only the shared `errors` and
    `options` of the package (not the parser that imports it, nor another command)."""
    package = Path(cxrlake.__file__).parent
    cli = package / "cli"
    shared = {"cxrlake.cli.errors", "cxrlake.cli.options"}
    offenders = []
    for source in sorted(package.rglob("*.py")):
        names = {
            n for n in _imported_names(source) if n == "cxrlake.cli" or n.startswith("cxrlake.cli.")
        }
        if source.parent != cli:
            if names:
                offenders.append(str(source.relative_to(package)))
        elif source.name not in ("__init__.py", "__main__.py"):
            modules = {n for n in names if n.count(".") <= 2}
            if not modules <= shared:
                offenders.append(f"{source.relative_to(package)}: {sorted(modules - shared)}")
    assert offenders == []
    assert not [p for p in package.rglob("cli.py")] + [p for p in package.rglob("*_cli.py")]


def test_no_command_raises_system_exit_or_prints_its_own_error():
    """Failures reach `cxrlake.cli.main` as exceptions: no `SystemExit` in the package (a
    ``python -m`` entry point ends with ``sys.exit(main())``), and no command module writes
    ``cxrlake <command>: error`` itself."""
    import ast

    package = Path(cxrlake.__file__).parent
    raised = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name) and target.id == "SystemExit":
                    raised.append(f"{source.relative_to(package)}:{node.lineno}")
    assert raised == []
    printed = []
    for source in sorted((package / "cli").glob("*.py")):
        if source.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                texts = [
                    c.value for a in node.args for c in ast.walk(a) if isinstance(c, ast.Constant)
                ]
                if any(isinstance(t, str) and ("error:" in t or "refused" in t) for t in texts):
                    printed.append(f"{source.name}:{node.lineno}")
    assert printed == []


def test_json_lines_are_strict_json_without_nan():
    from cxrlake.cli.predict import json_line

    line = json_line({"p": float("nan"), "h": {"v": [1.0, float("inf")]}, "ok": 0.5})
    assert json.loads(line) == {"p": None, "h": {"v": [1.0, None]}, "ok": 0.5}
    assert "NaN" not in line and "Infinity" not in line
