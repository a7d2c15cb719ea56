"""cxrlake.predict and cxrlake.Model: agreement with a pure-Python onnxruntime run on the same
tensors, thresholds and labels from the model metadata, row errors, fork safety."""

from __future__ import annotations

import json
import os
import select
import signal
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cxrlake
from cxrlake.exceptions import CxrlakeError, InvalidArgumentError, ModelError

PREDICT_COLUMNS = [
    "probability",
    "predicted_label",
    "label_name",
    "model_name",
    "model_version",
    "ood_score",
    "out_of_distribution",
    "ood_reason",
    "error",
]


def metadata(path: str) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


def onnxruntime_probabilities(model_path: str, tensors: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (probability,) = session.run(["probability"], {"input": tensors})
    return probability.reshape(-1)


@pytest.mark.parametrize("which", ["shipped", "tiny"])
def test_model_reads_its_metadata(which, shipped_model_path, tiny_model_path):
    path = shipped_model_path if which == "shipped" else tiny_model_path
    meta = metadata(path)
    model = cxrlake.Model(path)
    assert model.name == meta["cxrlake.model_name"]
    assert model.version == meta["cxrlake.model_version"]
    assert model.threshold == pytest.approx(float(meta["cxrlake.threshold"]))
    assert model.input_shape == (
        int(meta["cxrlake.input_channels"]),
        int(meta["cxrlake.input_height"]),
        int(meta["cxrlake.input_width"]),
    )
    assert model.labels == tuple(meta.get("cxrlake.labels", "NORMAL,PNEUMONIA").split(","))
    outputs = [o.name for o in onnx.load(path, load_external_data=False).graph.output]
    assert model.has_embedding == ("embedding" in outputs)


def test_default_model_is_the_shipped_file(shipped_model_path):
    assert cxrlake.Model().path == os.path.realpath(shipped_model_path)
    assert cxrlake.default_model_path().endswith("models/cxrlake_pneumonia.onnx")


@pytest.mark.parametrize("which", ["shipped", "tiny"])
def test_predict_agrees_with_onnxruntime_on_the_same_tensors(
    which, fullres_paths, shipped_model_path, tiny_model_path
):
    path = shipped_model_path if which == "shipped" else tiny_model_path
    model = cxrlake.Model(path)
    paths = fullres_paths[::4]
    tensors, errors = cxrlake.preprocess(paths, model=model)
    assert errors.null_count == len(paths)
    reference = onnxruntime_probabilities(path, tensors)

    batch = cxrlake.predict(paths, model=model, threads=2)
    assert batch.schema.names == PREDICT_COLUMNS
    probability = np.asarray(batch.column("probability"))
    np.testing.assert_allclose(probability, reference, rtol=0, atol=1e-5)
    labels = batch.column("predicted_label").to_pylist()
    assert labels == [int(p >= model.threshold) for p in probability]
    assert batch.column("label_name").to_pylist() == [model.labels[label] for label in labels]
    assert set(batch.column("model_name").to_pylist()) == {model.name}
    assert set(batch.column("model_version").to_pylist()) == {model.version}
    assert batch.column("error").null_count == len(paths)


def test_bytes_and_paths_give_identical_predictions(fullres_paths, tiny_model_path):
    paths = fullres_paths[:24]
    blobs = [Path(p).read_bytes() for p in paths]
    by_path = cxrlake.predict(paths, model=tiny_model_path)
    by_bytes = cxrlake.predict(blobs, model=tiny_model_path)
    assert by_path.equals(by_bytes)


def test_thread_count_does_not_change_results(fullres_paths, tiny_model_path):
    paths = fullres_paths[:40]
    one = cxrlake.predict(paths, model=tiny_model_path, threads=1)
    two = cxrlake.predict(paths, model=tiny_model_path, threads=2)
    assert one.equals(two)


def test_bad_rows_get_errors_and_the_batch_goes_on(fullres_paths, tiny_model_path, tmp_path):
    good = Path(fullres_paths[0]).read_bytes()
    images = [good, good[: len(good) // 2], b"", b"%PDF-1.7 not an image", None, good]
    batch = cxrlake.predict(images, model=tiny_model_path)
    errors = batch.column("error").to_pylist()
    assert errors == [
        None,
        "truncated JPEG",
        "empty image data",
        "not an image (unknown format)",
        "null input",
        None,
    ]
    probability = batch.column("probability").to_pylist()
    assert [p is None for p in probability] == [e is not None for e in errors]
    assert batch.column("predicted_label").to_pylist()[1:5] == [None] * 4
    # Model lineage is kept on failed rows too.
    assert batch.column("model_name").null_count == 0


def test_missing_or_invalid_model_raises_model_error(tmp_path, fullres_paths):
    with pytest.raises(ModelError, match="model file not found"):
        cxrlake.predict(fullres_paths[:1], model=tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError):
        cxrlake.Model(garbage)
    assert issubclass(ModelError, CxrlakeError)


def test_model_without_contract_metadata_is_refused(tmp_path):
    from make_tiny_model import build_model

    model = build_model(size=32)
    del model.metadata_props[:]
    path = tmp_path / "no_metadata.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="lacks metadata cxrlake"):
        cxrlake.Model(path)


def test_model_argument_type_is_checked(fullres_paths):
    with pytest.raises(InvalidArgumentError):
        cxrlake.predict(fullres_paths[:1], model=42)


def test_predict_works_in_a_forked_child(fullres_paths, tiny_model_path):
    # Spark forks Python workers from a parent that already used cxrlake: pools and sessions
    # must be rebuilt in the child instead of waiting on threads that do not exist there.
    paths = fullres_paths[:8]
    parent = cxrlake.predict(paths, model=tiny_model_path, threads=2)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a multi-threaded process may deadlock: exactly the
        # situation Spark creates, and the one this test checks cxrlake survives.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            child = cxrlake.predict(paths, model=tiny_model_path, threads=2)
            os.write(write_fd, json.dumps(child.column("probability").to_pylist()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 120)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("predict hung in a forked child")
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert json.loads(b"".join(chunks)) == parent.column("probability").to_pylist()
