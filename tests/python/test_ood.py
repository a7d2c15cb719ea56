"""Out-of-distribution flag: the graph output and its reference, the shipped model's rates on the
fixed evaluation set (`cxrlake.training.ood_set`), the DICOM header reasons, the worklist order
and the lakehouse columns (gold, model_performance, drift_metrics)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import cxrlake
from cxrlake.review.worklist import build_worklist
from cxrlake.training import ood, ood_set

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ the reference and the graph
def _embedding_model(path: Path, dim: int = 16) -> None:
    """A tiny ONNX model with the contract's outputs: embedding = mean over H, W of a ReLU'd 1x1
    convolution."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(dim, 3, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=dim).astype(np.float32), "b")
    head = numpy_helper.from_array(rng.normal(size=(dim, 1)).astype(np.float32), "head")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["activated"]),  # full-rank embeddings
        helper.make_node("GlobalAveragePool", ["activated"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "head"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", f, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("probability", f, ["N", 1]),
            helper.make_tensor_value_info("embedding", f, ["N", dim]),
        ],
        [w, b, head],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_graph_score_equals_the_numpy_reference_and_refits_replace_it(tmp_path):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "tiny.onnx"
    _embedding_model(path)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    emb = session.run(["embedding"], {"input": x})[0]
    reference = ood.fit_reference(emb[:48], components=4)
    model = ood.attach_ood(onnx.load(str(path)), reference, 1.5, {ood.METHOD_KEY: "test"})
    model = ood.attach_ood(model, reference, 2.5, {})  # a re-fit strips the first one
    assert sum(o.name == ood.OOD_OUTPUT for o in model.graph.output) == 1
    assert [p.value for p in model.metadata_props if p.key == ood.THRESHOLD_KEY] == ["2.500000"]
    out = tmp_path / "with_ood.onnx"
    onnx.save(model, str(out))
    scores = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["ood_score"], {"input": x}
    )[0]
    np.testing.assert_allclose(scores, reference.scores(emb), rtol=1e-4)
    # films like the fitted ones score about 1; far-away embeddings score much higher
    assert np.median(reference.scores(emb[:48])) < 1.2
    assert reference.scores(emb[:1] * 20)[0] > 5 * np.median(scores)
    stripped = ood.strip_ood(model)
    assert not any(n.name.startswith(ood.PREFIX) for n in stripped.graph.node)
    assert ood.OOD_OUTPUT not in {o.name for o in stripped.graph.output}


def test_out_of_fold_scores_are_higher_than_in_sample_ones():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(300, 40))
    groups = np.arange(300) // 3
    in_sample = ood.fit_reference(emb, 8).scores(emb)
    held_out = ood.out_of_fold_scores(emb, groups, folds=5, components=8)
    assert np.median(held_out) > np.median(in_sample)


# ------------------------------------------------------------------ the shipped model
@pytest.fixture(scope="module")
def shipped():
    model = cxrlake.Model()
    if not model.has_ood_score:
        pytest.fail("the shipped model has no ood_score output: python -m cxrlake.training.ood fit")
    return model


def _flag_rate(batch: pa.RecordBatch) -> float:
    flags = [
        f
        for f, e in zip(
            batch.column("out_of_distribution").to_pylist(),
            batch.column("error").to_pylist(),
            strict=True,
        )
        if e is None
    ]
    return sum(bool(f) for f in flags) / len(flags)


def test_shipped_model_flags_at_most_5_percent_of_validation_films(shipped, shared_data):
    train, val, _ = ood.training_split(
        Path(shipped.path), str(shared_data / "chest_xray" / "train"), None
    )
    assert not {r.path for r in train} & {r.path for r in val}
    # every fourth validation film (films the fit never saw), in a fixed order
    sample = [r.path for r in val][::4]
    batch = cxrlake.predict(sample, model=shipped)
    assert batch.column("error").null_count == len(sample)
    assert _flag_rate(batch) <= 0.05
    scores = np.array(batch.column("ood_score").to_pylist())
    assert np.all(np.isfinite(scores)) and np.median(scores) < shipped.ood_threshold


def test_shipped_model_flags_at_least_95_percent_of_non_chest_inputs(shipped):
    groups = ood_set.non_chest_inputs()
    # the whole fixed set is there (matplotlib and scikit-learn come with mlflow, pydicom-data
    # with requirements-dicom-test.txt)
    assert {k: len(v) for k, v in groups.items()} == {
        "photographs": 24,
        "drawings": 12,
        "ct_mr_us_dicom": len(ood_set.CT_MR_US),
        "ct_mr_us_pixels": len(ood_set.CT_MR_US),
        "dicom_other_modality": 2,
        "synthetic": 10,
    }
    # one kind per call: the DICOM files are paths, the rest bytes
    items = [
        item if isinstance(item, bytes) else Path(item).read_bytes()
        for group in groups.values()
        for _, item in group
    ]
    batch = cxrlake.predict(items, model=shipped)
    assert _flag_rate(batch) >= 0.95
    reasons = dict(
        zip(
            [n for g in groups.values() for n, _ in g],
            batch.column("ood_reason").to_pylist(),
            strict=True,
        )
    )
    assert "Modality CT" in reasons["CT_small.dcm"]
    assert "Modality MG" in reasons["RG1_J2KI.dcm:Modality=MG"]
    assert "ViewPosition LL" in reasons["RG1_J2KI.dcm:ViewPosition=LL"]


def test_a_flagged_film_is_still_scored_and_every_kernel_has_the_columns(shipped, train_paths):
    photo = ood_set.photograph_files()[0]
    images = [str(photo), train_paths[0]]
    predicted = cxrlake.predict(images, model=shipped)
    assert predicted.column("out_of_distribution").to_pylist() == [True, False]
    assert all(p is not None for p in predicted.column("probability").to_pylist())
    assert predicted.column("ood_reason").to_pylist()[1] is None
    analyzed = cxrlake.analyze(images, model=shipped, heatmap=False)
    explained = cxrlake.explain(images, model=shipped)
    for batch in (analyzed, explained):
        assert batch.column("ood_score").to_pylist() == predicted.column("ood_score").to_pylist()
        assert batch.column("out_of_distribution").to_pylist() == [True, False]


def test_model_card_and_ood_json_carry_the_figures(shipped):
    summary = json.loads((Path(shipped.path).parent / ood.RESULT_FILE).read_text())
    assert summary["fit"]["threshold"] == pytest.approx(shipped.ood_threshold, abs=1e-5)
    assert summary["fit"]["model_version"] == shipped.version
    card = (Path(shipped.path).parent / "MODEL_CARD.md").read_text()
    assert "## Out-of-distribution flag" in card and "python -m cxrlake.training.ood fit" in card
    assert (REPO / "MODEL_CARD.md").read_text() == card
    assert shipped.drift_reference and len(shipped.drift_reference["probability_bins"]) == 10


# ------------------------------------------------------------------ the worklist
def test_worklist_puts_flagged_films_first_with_the_reason():
    base = {
        "model_name": "m",
        "model_version": "1",
        "dataset_split": "train",
        "threshold": 0.5,
        "true_label": 0,
        "quality_score": 0.8,
    }
    preds = [
        # the film that needs a human most without the flag: disagrees, near the threshold
        {
            **base,
            "prediction_id": "a",
            "image_id": "a",
            "prediction_probability": 0.55,
            "predicted_label": 1,
        },
        {
            **base,
            "prediction_id": "b",
            "image_id": "b",
            "prediction_probability": 0.01,
            "predicted_label": 0,
            "out_of_distribution": True,
            "ood_score": 9.0,
            "ood_reason": "DICOM Modality CT, not a radiograph (CR/DX)",
        },
    ]
    items = build_worklist(preds, [], {}, "r")["items"]
    assert [i["image_id"] for i in items] == ["b", "a"]
    assert items[0]["out_of_distribution"] is True
    assert (
        items[0]["reasons"][0] == "out of distribution: DICOM Modality CT, not a radiograph (CR/DX)"
    )


# ------------------------------------------------------------------ the lakehouse
def test_pipeline_adds_the_columns_stores_flagged_films_and_writes_drift_once(
    shipped, tmp_path, train_paths, monkeypatch
):
    from deltalake import DeltaTable

    from cxrlake.lakehouse.pipeline import run_pipeline
    from cxrlake.medallion import schemas

    source = tmp_path / "src" / "train"
    (source / "NORMAL").mkdir(parents=True)
    (source / "PNEUMONIA").mkdir(parents=True)
    for p in train_paths[:6]:
        (source / "NORMAL" / Path(p).name).write_bytes(Path(p).read_bytes())
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image.open(ood_set.photograph_files()[0]).convert("RGB").save(
            source / "PNEUMONIA" / "photo.png"
        )
    lakehouse = tmp_path / "lh"
    # a lakehouse of an earlier version: gold tables without the columns this flag adds
    for spec, added in (
        (schemas.PREDICTIONS, ("ood_score", "out_of_distribution", "ood_reason")),
        (schemas.PERFORMANCE, ("flagged_samples",)),
    ):
        old = pa.schema([f for f in spec.arrow_schema if f.name not in added])
        DeltaTable.create(spec.path(lakehouse, "dev"), old, name=spec.name)
    run_pipeline([tmp_path / "src"], lakehouse, progress=False)
    catalog = schemas.catalog_path(lakehouse, "dev")
    gold = DeltaTable(f"{catalog}/gold/pneumonia_predictions").to_pyarrow_table().to_pylist()
    flagged = [r for r in gold if r["out_of_distribution"]]
    assert len(gold) == 7 and len(flagged) == 1 and flagged[0]["prediction_probability"] is not None
    assert "unlike the training films" in flagged[0]["ood_reason"]
    perf = DeltaTable(f"{catalog}/gold/model_performance").to_pyarrow_table().to_pylist()
    assert [r["flagged_samples"] for r in perf] == [1]
    drift_table = DeltaTable(f"{catalog}/gold/drift_metrics")
    drift = drift_table.to_pyarrow_table().to_pylist()
    assert len(drift) == 1 and drift[0]["film_count"] == 7 and drift[0]["flagged_count"] == 1
    assert drift[0]["probability_psi"] is not None and drift[0]["quality_shift"] is not None
    version = drift_table.version()
    run_pipeline([tmp_path / "src"], lakehouse, progress=False)
    assert DeltaTable(f"{catalog}/gold/drift_metrics").version() == version
    # the report lists the flagged film with its reason and plots the drift rows
    from cxrlake.lakehouse.report import build_report

    html = build_report(lakehouse)
    assert "Out of distribution and drift" in html and "unlike the training films" in html
    assert "PSI of the probability" in html and "flagged_samples" in html
    # SQL predict() on DuckDB carries the columns
    from cxrlake.lakehouse.sql import query

    row = query(
        lakehouse, f"SELECT predict('{source / 'PNEUMONIA' / 'photo.png'}') AS p"
    ).to_pylist()[0]["p"]
    assert row["out_of_distribution"] is True and row["ood_score"] > shipped.ood_threshold


def test_card_section_is_replaced_not_duplicated_and_kept_only_for_its_model_version(tmp_path):
    from cxrlake.training.card import OOD_TITLE, _ood_summary, insert_ood_section

    summary = json.loads((REPO / "python" / "cxrlake" / "models" / ood.RESULT_FILE).read_text())
    card = "# Model card\n\n## Reproduce\n\nx\n\n## Known limits\n\n- y\n"
    once = insert_ood_section(card, summary)
    twice = insert_ood_section(once, summary)
    assert once == twice and once.count(OOD_TITLE) == 1
    assert once.index(OOD_TITLE) < once.index("## Known limits")
    (tmp_path / ood.RESULT_FILE).write_text(json.dumps(summary))
    version = summary["fit"]["model_version"]
    assert _ood_summary(version, tmp_path) == summary
    assert _ood_summary("another version", tmp_path) is None  # a retrained model's card
