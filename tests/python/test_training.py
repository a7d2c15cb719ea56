"""Training: patient-grouped split, metrics, a short real fine-tuning run, the shipped model.

Real images from ``$CXRLAKE_SHARED_DATA`` (default ``<repo>/../shared/data``), real PyTorch,
real onnxruntime and the real cxrlake Rust core; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cxrlake
from cxrlake.medallion.metrics import binary_metrics, choose_threshold, roc_auc
from cxrlake.serving import registry
from cxrlake.training import data as data_mod
from cxrlake.training.config import TrainConfig
from cxrlake.training.export import (
    HEAD_BIAS_KEY,
    onnx_session,
    quantize_int8,
    read_metadata,
)
from cxrlake.training.model import PneumoniaNet, predict_torch
from cxrlake.training.run_files import load_checkpoint, load_saved_split
from cxrlake.training.train import finalize, fit

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN_DIR = SHARED / "chest_xray" / "train"
CARD = REPO / "MODEL_CARD.md"


@pytest.fixture(scope="module")
def records():
    if not TRAIN_DIR.is_dir():
        pytest.fail(f"shared data missing: {TRAIN_DIR} (set CXRLAKE_SHARED_DATA)")
    return data_mod.list_labelled_images(TRAIN_DIR)


def test_patient_id_reads_kaggle_names():
    assert data_mod.patient_id("person1000_bacteria_2931.jpeg") == "person1000"
    assert data_mod.patient_id("person1000_virus_1681.jpeg") == "person1000"
    assert data_mod.patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert data_mod.patient_id("NORMAL2-IM-0587-0001-0002.jpeg") == "NORMAL2-IM-0587"


def test_split_keeps_patients_and_duplicates_on_one_side(records):
    train, val = data_mod.patient_grouped_split(records, val_fraction=0.18, seed=42)
    assert len(train) + len(val) == len(records)
    train_patients = {(r.label, r.patient) for r in train}
    val_patients = {(r.label, r.patient) for r in val}
    assert not train_patients & val_patients

    def digests(rs):
        return {hashlib.sha256(Path(r.path).read_bytes()).hexdigest() for r in rs}

    assert not digests(train) & digests(val)
    # Stratified: each class is ~18 % validation.
    for label in (0, 1):
        n_val = sum(r.label == label for r in val)
        n_all = sum(r.label == label for r in records)
        assert 0.16 <= n_val / n_all <= 0.20
    # Seeded: the same seed gives the same split, another seed a different one.
    assert data_mod.patient_grouped_split(records, 0.18, 42)[1] == val
    assert data_mod.patient_grouped_split(records, 0.18, 7)[1] != val


def test_acquisition_order_reads_the_name_schemes():
    key = data_mod.acquisition_key
    assert key("IM-0766-0001.jpeg") < key("NORMAL2-IM-0383-0001.jpeg")  # IM- scheme first
    assert key("NORMAL2-IM-0383-0001.jpeg") < key("NORMAL2-IM-1423-0001.jpeg")
    assert key("person9_bacteria_38.jpeg") < key("person10_virus_35.jpeg")  # by patient number
    assert key("site_b_0001.jpeg") is None


def test_acquisition_split_holds_out_whole_later_batches(tmp_path):
    # Synthetic films (distinct bytes except one duplicate pair) named by the Kaggle schemes.
    names = {
        "NORMAL": [f"IM-{n:04d}-0001.jpeg" for n in range(100, 124)]
        + [f"NORMAL2-IM-{n:04d}-000{k}.jpeg" for n in range(400, 424) for k in (1, 2)],
        "PNEUMONIA": [f"person{n}_bacteria_{2 * n}.jpeg" for n in range(1, 49)]
        + [f"person{n}_virus_{2 * n + 1}.jpeg" for n in range(30, 49)],
    }
    for label, files in names.items():
        (tmp_path / label).mkdir()
        for name in files:
            (tmp_path / label / name).write_bytes(name.encode())
    # an exact copy of a late film under an early name: both go with the earliest of the two
    copy, original = "IM-0099-0001.jpeg", "NORMAL2-IM-0423-0001.jpeg"
    (tmp_path / "NORMAL" / copy).write_bytes((tmp_path / "NORMAL" / original).read_bytes())
    records = data_mod.list_labelled_images(tmp_path)
    train, val = data_mod.acquisition_split(records, n_batches=4, held_out=2)
    assert len(train) + len(val) == len(records)
    assert not {(r.label, r.patient) for r in train} & {(r.label, r.patient) for r in val}
    train_names = {Path(r.path).name for r in train}
    assert copy in train_names and original in train_names
    assert {r.batch for r in val} == {2, 3}
    assert all(r.batch == -1 for r in train)
    for label in (0, 1):
        for batch in (2, 3):
            assert any(r.label == label and r.batch == batch for r in val)
        # the held-out films are the latest of their class (the duplicate aside)
        val_keys = [data_mod.acquisition_key(Path(r.path).name) for r in val if r.label == label]
        latest_train = max(
            data_mod.acquisition_key(Path(r.path).name)
            for r in train
            if r.label == label and r.patient != "NORMAL2-IM-0423"  # the copy's group
        )
        assert min(val_keys) > latest_train
    # batch 3 holds later films than batch 2
    pneumonia = [r for r in val if r.label == 1]
    b2 = max(data_mod.acquisition_key(Path(r.path).name) for r in pneumonia if r.batch == 2)
    b3 = min(data_mod.acquisition_key(Path(r.path).name) for r in pneumonia if r.batch == 3)
    assert b2 < b3


def test_acquisition_split_of_the_training_films(records):
    train, val = data_mod.acquisition_split(records)
    assert not {(r.label, r.patient) for r in train} & {(r.label, r.patient) for r in val}
    # NORMAL validation films are NORMAL2- films, the scheme that came later
    assert all(Path(r.path).name.startswith("NORMAL2-") for r in val if r.label == 0)
    assert sorted({r.batch for r in val}) == [9, 10, 11]
    for label in (0, 1):
        share = sum(r.label == label for r in val) / sum(r.label == label for r in records)
        assert 0.23 <= share <= 0.27


def test_auc_and_threshold_rule():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 400), 0, 1)
    # AUC equals the pairwise definition P(score_pos > score_neg) + 0.5 P(tie).
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)

    threshold = choose_threshold(labels, scores, target_sensitivity=0.95)
    metrics = binary_metrics(labels, scores, threshold)
    assert metrics["sensitivity"] >= 0.95
    # Highest specificity: nudging the threshold above the next positive breaks the target.
    next_pos = np.sort(pos[pos >= threshold])[0]
    assert binary_metrics(labels, scores, next_pos + 1e-9)["sensitivity"] < 0.95
    c = metrics["confusion"]
    assert c["tp"] + c["fn"] == labels.sum() and c["tn"] + c["fp"] == (labels == 0).sum()
    assert sum(b["count"] for b in metrics["calibration"]) == len(labels)


def _bce(net, pixels: np.ndarray, labels: np.ndarray) -> float:
    prob = predict_torch(net, pixels)
    return float(
        F.binary_cross_entropy(
            torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6), torch.from_numpy(labels).float()
        )
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A real 3-epoch fine-tuning of EfficientNet-Lite0 on 48 images at 64 px."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=str(TRAIN_DIR),
        run_dir=str(run_dir),
        size=64,
        epochs=3,
        batch_size=8,
        lr=2e-3,
        limit=24,
        threads=1,
        model_version="0.0.1-test",
    )
    fit(cfg)
    # keep_bn: 18 steps leave the trailing BN statistics stale; 12 validation films cannot judge
    summary = finalize(run_dir, ship_to=run_dir / "shipped", try_int8=False, keep_bn=True)
    return cfg, run_dir, summary


def test_short_training_run_lowers_the_training_loss(short_run):
    cfg, run_dir, _ = short_run
    train, _ = load_saved_split(run_dir)
    pixels = data_mod.load_pixel_cache([r.path for r in train], cfg.size)
    labels = np.array([r.label for r in train])
    # The same starting point fit() had: ImageNet backbone + a freshly initialised head.
    torch.manual_seed(cfg.seed)
    initial = PneumoniaNet(cfg.size, pretrained=True)
    trained, saved_cfg, history = load_checkpoint(run_dir, final=True)
    assert saved_cfg == cfg
    assert [h["epoch"] for h in history] == [1, 2, 3]
    before, after = _bce(initial, pixels, labels), _bce(trained, pixels, labels)
    assert after < 0.8 * before, f"training loss did not fall: {before:.3f} -> {after:.3f}"


def test_short_run_writes_a_contract_onnx_that_cxrlake_loads(short_run):
    cfg, run_dir, summary = short_run
    path = run_dir / "shipped" / "cxrlake_pneumonia.onnx"
    assert path.is_file()
    meta = read_metadata(path)
    assert meta["cxrlake.model_name"] == "cxrlake-pneumonia-effnetlite0"
    assert meta["cxrlake.input_height"] == meta["cxrlake.input_width"] == "64"
    assert float(meta["cxrlake.threshold"]) == pytest.approx(summary["validation"]["threshold"])
    assert summary["torch_vs_onnxruntime"]["max_abs_diff_probability"] < 1e-4
    # A new export carries the heatmap output: 64 px input -> 2x2 grid.
    outputs = {o.name: o.shape for o in onnx_session(path).get_outputs()}
    assert outputs["heatmap"][1:] == [2, 2]

    model = cxrlake.Model(str(path))
    assert model.name == "cxrlake-pneumonia-effnetlite0"
    assert model.version == "0.0.1-test"
    assert tuple(model.input_shape) == (3, 64, 64)
    assert model.has_embedding

    _, val = load_saved_split(run_dir)
    batch = cxrlake.predict([r.path for r in val], model=model)
    probs = np.array(batch.column("probability").to_pylist(), dtype=np.float64)
    assert batch.column("error").null_count == len(val)
    # The Rust core and the Python preprocessing + torch score the same images alike. The bound
    # allows the +-2 grey levels by which the Rust and PIL antialiased resizes may differ.
    # The shipped file is the calibrated one: sigmoid(logit / cxrlake.temperature).
    trained, _, _ = load_checkpoint(run_dir, final=True)
    raw = predict_torch(trained, data_mod.load_pixel_cache([r.path for r in val], 64))
    temperature = float(meta["cxrlake.temperature"])
    expected = 1.0 / (1.0 + np.exp(-np.log(raw / (1.0 - raw)) / temperature))
    assert np.max(np.abs(probs - expected)) < 0.05
    labels = batch.column("predicted_label").to_pylist()
    assert labels == [int(p >= model.threshold) for p in probs]


# Third-party noise: SQLAlchemy 2.1 deprecates a loader strategy MLflow's sqlite store still uses,
# and MLflow warns about type hints of its own internal types.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred:UserWarning")
def test_short_run_is_logged_and_registered_in_mlflow(short_run, tmp_path):
    import mlflow

    _, run_dir, summary = short_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A registry URI left by earlier code in the process must not receive this model.
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    result = registry.log_and_register(run_dir, tracking_uri=uri, name="cxrlake_test_model")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("cxrlake_test_model", "champion")
    assert str(version.version) == result["model_version"] == "1"
    run = client.get_run(result["run_id"])
    assert run.data.params["size"] == "64"
    assert run.data.metrics["val_auc"] == pytest.approx(summary["validation"]["auc"])
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "onnx_file")}
    assert "onnx_file/model.onnx" in artifacts


def test_uc_model_name_is_per_environment():
    assert registry.uc_model_name("prod", "pneumonia_classifier") == (
        "healthcare_catalog_prod.models.pneumonia_classifier"
    )
    with pytest.raises(ValueError):
        registry.uc_model_name("dev; DROP", "x")


def _card_figures() -> dict:
    """The validation figures recorded in MODEL_CARD.md (machine-readable block)."""
    text = CARD.read_text()
    block = text.split("<!-- metrics-json")[1].split("-->")[0]
    return json.loads(block)


def test_shipped_model_scores_validation_images_like_its_card(records):
    card = _card_figures()
    model = cxrlake.Model()
    assert model.name == "cxrlake-pneumonia-effnetlite0"
    assert model.version == card["model_version"]
    assert model.threshold == pytest.approx(card["threshold"], abs=1e-6)
    if card.get("split") == "acquisition":
        _, val = data_mod.acquisition_split(records, card["n_batches"], card["held_out_batches"])
    else:
        _, val = data_mod.patient_grouped_split(records, card["val_fraction"], card["seed"])
    rng = random.Random(0)
    sample = [r for label in (0, 1) for r in rng.sample([v for v in val if v.label == label], 50)]
    batch = cxrlake.predict([r.path for r in sample])
    probs = np.array(batch.column("probability").to_pylist(), dtype=np.float64)
    labels = np.array([r.label for r in sample])
    metrics = binary_metrics(labels, probs, model.threshold)
    # 100 images: allow sampling error around the card's full-split figures.
    assert metrics["auc"] >= card["auc"] - 0.04
    assert metrics["sensitivity"] >= card["sensitivity"] - 0.08
    assert metrics["specificity"] >= card["specificity"] - 0.15


def test_shipped_model_follows_the_onnx_contract():
    import onnxruntime as ort

    path = cxrlake.default_model_path()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 160, 160]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs["probability"][1:] == [] and outputs["embedding"][1:] == [1280]
    assert outputs["heatmap"][1:] == [5, 5]
    meta = read_metadata(path)
    assert meta["cxrlake.labels"] == "NORMAL,PNEUMONIA"
    assert meta["cxrlake.resize"] == "bilinear"
    assert float(meta["cxrlake.mean"]) == pytest.approx(127 / 255, abs=1e-6)
    assert float(meta["cxrlake.std"]) == pytest.approx(128 / 255, abs=1e-6)
    x = np.zeros((3, 3, 160, 160), dtype=np.float32)
    prob, emb = session.run(["probability", "embedding"], {"input": x})
    assert prob.shape == (3,) and emb.shape == (3, 1280)
    assert np.all((prob >= 0) & (prob <= 1))
    # The card next to the model is the top-level card.
    assert (Path(path).parent / "MODEL_CARD.md").read_text() == CARD.read_text()


def _heatmap_logit_gap(path, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(probabilities, max |sigmoid(head_bias + mean(heatmap)) - probability|) on ``x``."""
    session = onnx_session(path)
    prob, heatmap = session.run(["probability", "heatmap"], {"input": x})
    bias = float(read_metadata(path)[HEAD_BIAS_KEY])
    logit = bias + heatmap.reshape(len(heatmap), -1).mean(axis=1, dtype=np.float64)
    return prob, float(np.max(np.abs(1.0 / (1.0 + np.exp(-logit)) - prob)))


def test_int8_export_keeps_a_float_head_and_a_consistent_heatmap(short_run, tmp_path):
    cfg, run_dir, _ = short_run
    train, val = load_saved_split(run_dir)
    int8 = quantize_int8(
        run_dir / "model_fp32.onnx", tmp_path / "int8.onnx", [r.path for r in train[:8]], cfg.size
    )
    x = data_mod.normalise(
        data_mod.load_pixel_cache([r.path for r in val], cfg.size), 127 / 255, 128 / 255
    )
    _, gap = _heatmap_logit_gap(int8, x)
    assert gap < 1e-5
    assert _ops_from_pooling_to_probability(int8) == ["Flatten", "Gemm", "Squeeze", "Sigmoid"]
    # The backbone is still int8.
    assert _count_ops(int8, "QuantizeLinear") > 50


def _ops_from_pooling_to_probability(path) -> list[str]:
    """Op types on the path from the GlobalAveragePool output back to ``probability``."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    ops, tensor = [], "probability"
    while producer[tensor].op_type != "GlobalAveragePool":
        node = producer[tensor]
        ops.append(node.op_type)
        tensor = node.input[0]
    return ops[::-1]


def _count_ops(path, op_type: str) -> int:
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(str(path)).graph.node)


def test_shipped_model_heatmap_reconstructs_the_logit(fullres_paths):
    path = cxrlake.default_model_path()
    sample = fullres_paths[::10]
    x = data_mod.normalise(data_mod.load_pixel_cache(sample, 160), 127 / 255, 128 / 255)
    prob, gap = _heatmap_logit_gap(path, x)
    assert prob.shape == (len(sample),)
    # The int8 backbone feeds both the pooled head and the map: they agree to float rounding,
    # far inside the int8 step of the activations.
    assert gap < 1e-5
    (_, heatmap) = onnx_session(path).run(["probability", "heatmap"], {"input": x[:2]})
    assert heatmap.shape == (2, 5, 5) and heatmap.dtype == np.float32
    assert _ops_from_pooling_to_probability(path) == ["Flatten", "Gemm", "Squeeze", "Sigmoid"]


def test_shipped_model_probabilities_are_continuous(fullres_paths):
    # The int8 output of the first shipped file gave these 200 films 26 distinct values.
    batch = cxrlake.predict(fullres_paths)
    probs = batch.column("probability").to_pylist()
    assert batch.column("error").null_count == len(probs)
    assert len(set(probs)) >= 0.95 * len(probs)


def test_development_films_are_recognised_by_bytes_or_patient(fullres_paths, train_paths, tmp_path):
    from cxrlake import provenance

    # The full-resolution originals are other files (other bytes) of development patients.
    sample = fullres_paths[::20] + train_paths[::500]
    shas = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in sample]
    categories = [Path(p).parent.name for p in sample]
    names = [Path(p).name for p in sample]
    assert all(provenance.seen_in_development(categories, names, shas))
    # A renamed copy is still known by its bytes; a new film of a new patient is not known.
    assert provenance.seen_in_development(["NORMAL"], ["site_b_0001.jpeg"], [shas[-1]]) == [True]
    other = hashlib.sha256(b"another film").hexdigest()
    assert provenance.seen_in_development(["NORMAL"], ["site_b_0001.jpeg"], [other]) == [False]
    # A model without a list knows no development film.
    lone = tmp_path / "model.onnx"
    lone.write_bytes(b"")
    assert provenance.seen_in_development(categories, names, shas, model_path=str(lone)) == [
        False
    ] * len(sample)


def test_train_subcommand_reaches_its_handler():
    from cxrlake.cli import build_parser
    from cxrlake.cli.train import run

    # cxrlake.cli.main dispatches on ``handler``; the train module's own, unwrapped.
    args = build_parser().parse_args(["train", "--finalize-only", "--run-dir", "somewhere"])
    assert args.handler is run


def test_rerendering_the_card_keeps_the_sections_measured_elsewhere(short_run, tmp_path):
    from cxrlake.training.card import write_card

    _, run_dir, _ = short_run
    card = tmp_path / "MODEL_CARD.md"
    write_card(run_dir, card)
    section = "## Heatmap: exactness and faithfulness\n\nMeasured by a script.\n\n"
    card.write_text(card.read_text().replace("## Reproduce\n", section + "## Reproduce\n"))
    write_card(run_dir, card)
    text = card.read_text()
    assert text.count(section) == 1 and text.index(section) < text.index("## Reproduce")
