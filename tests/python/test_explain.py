"""Class-activation maps: cxrlake.analyze's heatmap column and cxrlake.explain (maps, overlays).

The shipped model's head is global average pooling then one linear logit, so its map is exact:
``head_bias + mean(map) = logit``. A tiny generated model whose map is the mean brightness of
each 8x8 block makes placement and orientation checkable cell by cell.
"""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import pyarrow as pa
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import cxrlake
from cxrlake.exceptions import InvalidArgumentError, ModelError

ANALYZE_COLUMNS = [
    "width",
    "height",
    "mean_pixel_value",
    "std_pixel_value",
    "quality_score",
    "embedding",
    "probability",
    "predicted_label",
    "label_name",
    "model_name",
    "model_version",
    "ood_score",
    "out_of_distribution",
    "ood_reason",
    "heatmap",
    "error",
]
HEATMAP_TYPE = pa.struct(
    [
        pa.field("rows", pa.int32()),
        pa.field("cols", pa.int32()),
        pa.field("values", pa.list_(pa.float32())),
    ]
)
BRIGHTNESS_BIAS = -1.5


def brightness_model(path, size: int = 64, block: int = 8) -> str:
    """A model whose map cell (i, j) is the mean normalised brightness of 8x8 block (i, j).

    input -> AveragePool(block) = A [N, 3, size/block, size/block] -> GlobalAveragePool -> Flatten
    = embedding -> Gemm(w, b) -> Sigmoid = probability; heatmap = Conv1x1(A, w) without bias,
    squeezed to [N, Hf, Wf], so b + mean(heatmap) is the logit exactly.
    """
    w = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    nodes = [
        helper.make_node(
            "AveragePool",
            ["input"],
            ["features"],
            kernel_shape=[block, block],
            strides=[block, block],
        ),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
        helper.make_node("Gemm", ["embedding", "w", "b"], ["logit"], transB=1),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
        helper.make_node("Conv", ["features", "w_conv"], ["cam"]),
        helper.make_node("Squeeze", ["cam", "axis1"], ["heatmap"]),
    ]
    grid = size // block
    graph = helper.make_graph(
        nodes,
        "brightness_cam",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", grid, grid]),
        ],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([BRIGHTNESS_BIAS], np.float32), "b"),
            numpy_helper.from_array(w.reshape(1, 3, 1, 1), "w_conv"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "cxrlake.model_name": "brightness-cam",
            "cxrlake.model_version": "0.0.1",
            "cxrlake.threshold": "0.5",
            "cxrlake.input_height": str(size),
            "cxrlake.input_width": str(size),
            "cxrlake.input_channels": "3",
            "cxrlake.mean": "0.5",
            "cxrlake.std": "0.5",
            "cxrlake.resize": "bilinear",
            "cxrlake.labels": "NORMAL,PNEUMONIA",
            "cxrlake.head_bias": repr(BRIGHTNESS_BIAS),
        },
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory) -> str:
    return brightness_model(tmp_path_factory.mktemp("cam") / "brightness.onnx")


@pytest.fixture(scope="module")
def sample_paths(fullres_paths) -> list[str]:
    """Four NORMAL and four PNEUMONIA full-resolution images."""
    return fullres_paths[:4] + fullres_paths[-4:]


def png(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format="PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format="PNG", exif=exif.tobytes())
    return buffer.getvalue()


def grid(heatmap: dict) -> np.ndarray:
    return np.asarray(heatmap["values"], np.float64).reshape(heatmap["rows"], heatmap["cols"])


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_shipped_model_map_mean_plus_bias_is_the_logit(sample_paths):
    model = cxrlake.Model()
    assert model.has_heatmap and model.head_bias is not None
    rows = cxrlake.analyze(sample_paths, model).to_pylist()
    checked = 0
    for row in rows:
        assert row["error"] is None
        assert (row["heatmap"]["rows"], row["heatmap"]["cols"]) == (5, 5)
        p = row["probability"]
        if 1e-5 < p < 1 - 1e-5:  # beyond that float32 sigmoid saturates and the logit is lost
            # The backbone is int8 but the head and the map share its last feature map in float:
            # the identity holds to float rounding; 0.02 logit leaves room for kernel reordering.
            assert model.head_bias + grid(row["heatmap"]).mean() == pytest.approx(
                logit(p), abs=0.02
            )
            checked += 1
    assert checked >= 4


def test_analyze_is_predict_plus_statistics_from_one_pass(sample_paths, tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    inputs = sample_paths + [str(broken)]
    batch = cxrlake.analyze(inputs, threads=2)
    assert batch.schema.names == ANALYZE_COLUMNS
    assert batch.schema.field("heatmap").type == HEATMAP_TYPE
    predicted = cxrlake.predict(inputs, threads=2)
    for name in ("probability", "predicted_label", "label_name", "model_name", "model_version"):
        assert batch.column(name).to_pylist() == predicted.column(name).to_pylist(), name
    rows = batch.to_pylist()
    assert rows[-1]["error"] is not None and rows[-1]["heatmap"] is None
    assert rows[-1]["model_name"] == predicted.column("model_name")[0].as_py()
    full = cxrlake.features(sample_paths, embedding=False).to_pylist()
    for row, reference in zip(rows, full, strict=False):
        assert (row["width"], row["height"]) == (reference["width"], reference["height"])
        # Statistics of the DCT-scaled decode stay close to the full-resolution ones.
        assert row["mean_pixel_value"] == pytest.approx(reference["mean_pixel_value"], abs=1.0)
        assert row["std_pixel_value"] == pytest.approx(reference["std_pixel_value"], abs=2.0)
        assert row["quality_score"] == pytest.approx(reference["quality_score"], abs=0.05)
        assert len(row["embedding"]) == cxrlake.Model().embedding_dim
    off = cxrlake.analyze(sample_paths[:2], heatmap=False)
    assert off.column("heatmap").null_count == 2
    assert off.column("probability").to_pylist() == batch.column("probability").to_pylist()[:2]


def test_models_without_a_heatmap_output_give_null_maps(sample_paths, tiny_model_path):
    batch = cxrlake.analyze(sample_paths[:2], tiny_model_path)
    assert batch.column("error").null_count == 2
    assert batch.column("heatmap").null_count == 2
    assert batch.schema.field("heatmap").type == HEATMAP_TYPE
    assert not cxrlake.Model(tiny_model_path).has_heatmap
    with pytest.raises(ModelError, match="no heatmap output"):
        cxrlake.explain(sample_paths[:1], tiny_model_path)


def test_map_cells_follow_the_upright_image(cam_model):
    # Bright top-left block, dark elsewhere: the hottest cell must be the top-left one, also
    # when the pixels are stored rotated and an EXIF orientation tag turns them upright.
    upright = np.full((64, 96), 20, np.uint8)
    upright[:16, :24] = 235
    image = Image.fromarray(upright)
    stored_rotated = image.transpose(Image.Transpose.ROTATE_90)  # turned left; tag 6 turns it back
    inputs = [png(image), png(stored_rotated, orientation=6), png(stored_rotated)]
    batch = cxrlake.explain(inputs, cam_model)
    assert batch.column("error").null_count == 3
    maps = [grid(h) for h in batch.column("heatmap").to_pylist()]
    assert maps[0].shape == (8, 8)
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (0, 0)
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-6)
    # Without the tag the model sees the stored pixels: the bright block is bottom-left.
    assert np.unravel_index(maps[2].argmax(), maps[2].shape) == (7, 0)
    # The map is exact: bias + mean = logit.
    for row in batch.to_pylist():
        assert BRIGHTNESS_BIAS + grid(row["heatmap"]).mean() == pytest.approx(
            logit(row["probability"]), abs=1e-4
        )


def test_real_image_map_is_upright_under_exif_rotation(fullres_paths):
    with Image.open(fullres_paths[-1]) as source:
        image = source.convert("L").resize((400, 320))
    stored = image.transpose(Image.Transpose.ROTATE_270)  # turned right; tag 8 turns it back
    batch = cxrlake.explain([png(image), png(stored, orientation=8), png(stored)])
    maps = [grid(h) for h in batch.column("heatmap").to_pylist()]
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-4)
    assert np.abs(maps[2] - maps[0]).max() > 0.01


def test_explain_overlays_paths_and_bytes(sample_paths, tmp_path):
    with open(sample_paths[-1], "rb") as file:
        data = file.read()
    by_path = cxrlake.explain(
        [sample_paths[-1], str(tmp_path / "missing.jpeg")],
        overlay_size=200,
        roots=[str(tmp_path), sample_paths[-1].rsplit("/", 2)[0]],
    )
    by_bytes = cxrlake.explain(pa.array([data], pa.binary()), overlay_size=200)
    assert by_path.column("heatmap")[0].as_py() == by_bytes.column("heatmap")[0].as_py()
    assert by_path.column("overlay")[0].as_py() == by_bytes.column("overlay")[0].as_py()
    error = by_path.column("error")[1].as_py()
    assert error.startswith("file not found") and by_path.column("overlay")[1].as_py() is None
    overlay = Image.open(io.BytesIO(by_path.column("overlay")[0].as_py()))
    with Image.open(sample_paths[-1]) as source:
        width, height = source.size
    assert overlay.mode == "RGB" and overlay.height == round(200 * height / max(width, height))
    assert overlay.width > round(200 * width / max(width, height))  # colour scale at the right
    row = by_path.to_pylist()[0]
    assert row["heatmap_scale"] == pytest.approx(np.abs(grid(row["heatmap"])).max(), rel=1e-6)
    assert cxrlake.explain([sample_paths[0]]).column("overlay").null_count == 1
    with pytest.raises(InvalidArgumentError, match="overlay_size"):
        cxrlake.explain([sample_paths[0]], overlay_size=8)


@pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas >= 3.0.0:FutureWarning"
)
def test_spark_sql_explain_and_analyze_equal_the_core(sample_paths, tmp_path):
    import os
    import sys

    from pyspark.sql import SparkSession

    from cxrlake.spark import register

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("cxrlake-explain-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
        .getOrCreate()
    )
    try:
        register(spark, overlay_size=64)
        images = sample_paths[:2] + [str(tmp_path / "missing.jpeg")]
        frame = spark.createDataFrame([(p,) for p in images], "path STRING")
        frame.createOrReplaceTempView("paths")
        rows = spark.sql(
            "SELECT explain(path) AS e, analyze(path) AS a, explain(read_bytes) AS b FROM "
            "(SELECT path, CAST(NULL AS BINARY) AS read_bytes FROM paths)"
        ).collect()
        core = cxrlake.explain(images, overlay_size=64).to_pylist()
        analyzed = cxrlake.analyze(images).to_pylist()
        for row, expected, expected_analyze in zip(rows, core, analyzed, strict=True):
            got = row["e"].asDict(recursive=True)
            assert got["error"] == expected["error"]
            assert got["overlay"] == expected["overlay"]
            if expected["heatmap"] is not None:
                assert got["heatmap"]["values"] == pytest.approx(expected["heatmap"]["values"])
                assert row["a"]["probability"] == expected_analyze["probability"]
                assert row["a"]["heatmap"]["rows"] == 5
            assert row["b"]["error"] == "null input"
        with open(sample_paths[0], "rb") as file:
            data = file.read()
        spark.createDataFrame([(data,)], "content BINARY").createOrReplaceTempView("blobs")
        by_bytes = spark.sql("SELECT explain(content) AS e FROM blobs").collect()[0]["e"]
        assert by_bytes["heatmap"]["values"] == pytest.approx(core[0]["heatmap"]["values"])
    finally:
        spark.stop()


def test_duckdb_explain_on_paths_and_bytes(sample_paths):
    import duckdb

    from cxrlake.lakehouse.sql import _register_udfs

    con = duckdb.connect()
    _register_udfs(con, None, None, "memory")
    with open(sample_paths[-1], "rb") as file:
        data = file.read()
    row = con.execute(
        "SELECT explain(?) AS p, explain_bytes(?) AS b, explain_overlay(?, 96) AS o, "
        "explain('/no/such.jpeg').error AS e",
        [sample_paths[-1], data, sample_paths[-1]],
    ).fetchone()
    expected = cxrlake.explain([sample_paths[-1]], overlay_size=96).to_pylist()[0]
    by_path, by_bytes, overlay, error = row
    assert by_path["heatmap"]["values"] == pytest.approx(expected["heatmap"]["values"])
    assert by_bytes["heatmap"] == by_path["heatmap"]
    assert by_path["probability"] == expected["probability"]
    assert bytes(overlay) == expected["overlay"]
    assert error == "file not found: /no/such.jpeg"


def test_duckdb_explain_overlay_draws_each_row_at_its_own_size(sample_paths):
    import io

    import duckdb
    from PIL import Image

    from cxrlake.lakehouse.sql import _register_udfs

    con = duckdb.connect()
    _register_udfs(con, None, None, "memory")
    con.execute("CREATE TABLE films(path VARCHAR, size INTEGER, k INTEGER)")
    rows = [(sample_paths[0], 64, 0), (sample_paths[0], 160, 1), (sample_paths[1], 96, 2)]
    con.executemany("INSERT INTO films VALUES (?, ?, ?)", rows)
    con.execute("INSERT INTO films VALUES (?, NULL, 3)", [sample_paths[1]])
    got = con.execute("SELECT size, explain_overlay(path, size) FROM films ORDER BY k").fetchall()
    for size, png in got[:3]:
        with Image.open(io.BytesIO(bytes(png))) as picture:
            # the longer side of the film is `size`; the colour scale adds to the width
            assert picture.size[1] <= size and max(picture.size) >= size, (size, picture.size)
    assert got[3][1] is None


def test_report_overlays_show_errors_and_keep_images_opt_in(fullres_paths):
    import duckdb

    from cxrlake.lakehouse.report.overlays import overlay_section, pick_examples

    # Two NORMAL and two PNEUMONIA images with made-up verdicts: one of each is an error.
    paths = fullres_paths[:2] + fullres_paths[-2:]
    con = duckdb.connect()
    con.execute("CREATE SCHEMA bronze")
    con.execute(
        "CREATE TABLE bronze.kaggle_xray_metadata(image_id VARCHAR, content_sha256 VARCHAR, "
        "content BLOB)"
    )
    preds = []
    for k, path in enumerate(paths):
        with open(path, "rb") as file:
            con.execute(
                "INSERT INTO bronze.kaggle_xray_metadata VALUES (?, ?, ?)",
                [f"img{k}", f"sha{k}", file.read()],
            )
        truth = 0 if k < 2 else 1
        predicted = truth if k in (0, 3) else 1 - truth
        preds.append(
            {
                "image_id": f"img{k}",
                "content_sha256": f"sha{k}",
                "true_label": truth,
                "predicted_label": predicted,
                "prediction_probability": 0.9 if predicted else 0.1,
                "confidence_score": 0.9,
            }
        )
    # The true negative carries a stored map (made up: hottest at row 2, col 4): the report must
    # draw that one, not recompute it.
    stored = [0.0] * 25
    stored[1 * 5 + 3] = 3.0
    preds[0]["heatmap"] = {"rows": 5, "cols": 5, "values": stored}
    kinds = [kind for kind, _ in pick_examples(preds)]
    assert kinds == ["false positive", "false negative", "true positive", "true negative"]
    with_images = overlay_section(con, preds, thumbnails=True)
    assert with_images.count("data:image/png;base64,") == 4
    assert "false negative" in with_images and "#attribution" in with_images
    without = overlay_section(con, preds, thumbnails=False)
    assert "data:image" not in without and "img1" in without and "of 5x5" in without
    assert "row 2, col 4 of 5x5" in without and "row 2, col 4 of 5x5" in with_images


def test_render_overlay_draws_a_stored_map(sample_paths, tmp_path):
    explained = cxrlake.explain([sample_paths[-1]], overlay_size=120).to_pylist()[0]
    png = cxrlake.render_overlay(sample_paths[-1], explained["heatmap"], 120)
    drawn = Image.open(io.BytesIO(png))
    assert drawn.size == Image.open(io.BytesIO(explained["overlay"])).size
    with pytest.raises(InvalidArgumentError, match="holds 3 values"):
        cxrlake.render_overlay(sample_paths[-1], {"rows": 5, "cols": 5, "values": [1, 2, 3]})
    with pytest.raises(InvalidArgumentError, match="file not found"):
        cxrlake.render_overlay(str(tmp_path / "gone.png"), explained["heatmap"])
