"""The engine-neutral services over the catalog port: `cxrlake.metrics_service` and
`cxrlake.provenance`, on the local adapter over a lakehouse the pipeline wrote."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import cxrlake
from cxrlake import metrics_service, provenance
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.lakehouse.pipeline import run_pipeline
from cxrlake.medallion import schemas

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN = DATA / "chest_xray" / "train"


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("services")
    for label, count in (("NORMAL", 3), ("PNEUMONIA", 2)):
        (root / "src" / "train" / label).mkdir(parents=True)
        for name in sorted(os.listdir(TRAIN / label))[:count]:
            shutil.copyfile(TRAIN / label / name, root / "src" / "train" / label / name)
    run_pipeline([root / "src"], root / "lh", progress=False)
    return root / "lh"


def test_a_recorded_evaluation_and_unchanged_drift_give_no_rows(lakehouse):
    catalog = LocalCatalog.at(lakehouse)
    model = cxrlake.Model()
    assert metrics_service.performance_rows(catalog, model, model.threshold).num_rows == 0
    assert metrics_service.drift_rows(catalog, model).num_rows == 0
    # the same predictions decided at another threshold are another evaluation
    other = metrics_service.performance_rows(catalog, model, 0.25)
    assert other.column("dataset_split").to_pylist() == ["train"]
    assert other.column("threshold").to_pylist() == [0.25]
    assert other.column("total_samples").to_pylist() == [5]


def test_latest_performance_is_the_stored_row_of_each_split(lakehouse):
    catalog = LocalCatalog.at(lakehouse)
    model = cxrlake.Model()
    (latest,) = metrics_service.latest_performance(catalog, model.name, model.version)
    (stored,) = catalog.read(schemas.PERFORMANCE).to_pylist()
    assert latest["dataset_split"] == "train" and latest["total_samples"] == 5
    assert latest["accuracy"] == stored["accuracy"]
    assert latest["confusion_matrix"]["labels"] == ["NORMAL", "PNEUMONIA"]
    assert metrics_service.latest_performance(catalog, model.name, "0.0.0") == []


def test_no_verdicts_give_no_agreement(lakehouse):
    assert metrics_service.review_agreement(LocalCatalog.at(lakehouse)) == []


def test_the_shipped_model_knows_its_training_films_by_bytes_and_patient(lakehouse, tmp_path):
    catalog = LocalCatalog.at(lakehouse)
    films = provenance.labelled_films(catalog)
    assert films.num_rows == 5
    # the films come from the training folder the shipped model was developed on
    assert provenance.catalog_share(catalog) == {"train": (5, 5)}
    caveat = provenance.evaluation_caveat({"train": (5, 5)}, "train")
    assert caveat.startswith("training-set figures")
    assert provenance.evaluation_caveat({"train": (2, 5)}, "train").startswith("2 of 5 films")
    assert provenance.evaluation_caveat({"train": (0, 5)}, "train") == ""
    # a model without a list next to it knows no film
    lone = tmp_path / "model.onnx"
    lone.write_bytes(b"")
    assert provenance.catalog_share(catalog, str(lone)) == {"train": (0, 5)}
    # the keys: bytes by their sha256 prefix, patients by category and file-name prefix
    sha = hashlib.sha256(b"x").hexdigest()
    assert provenance.content_key(sha) == f"c:{sha[:16]}"
    assert provenance.patient_id("person1000_virus_1681.jpeg") == "person1000"
    assert provenance.patient_key("pneumonia", "person1_x.jpeg") == provenance.patient_key(
        "PNEUMONIA", "person1_y.jpeg"
    )
