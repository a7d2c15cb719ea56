"""Pure parts of the lakehouse: identity rules, listing, sampling, metrics, schemas."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from cxrlake.lakehouse import listing
from cxrlake.medallion import identity, metrics, schemas, transforms


def test_identity_from_labelled_and_unlabelled_paths():
    a = identity.identify("/data/chest_xray/train/NORMAL/IM-0115-0001.jpeg")
    assert (a.filename, a.category, a.dataset_split) == ("IM-0115-0001.jpeg", "NORMAL", "train")
    b = identity.identify("/x/chest_xray_fullres/PNEUMONIA/person1_virus_6.jpeg")
    assert (b.category, b.dataset_split) == ("PNEUMONIA", "chest_xray_fullres")
    c = identity.identify("/tmp/Incoming Scans/scan 1.jpeg")
    assert (c.category, c.dataset_split) == (None, "incoming_scans")
    # a lower-case label folder and a URI give the same identity as the local path
    d = identity.identify("dbfs:/Volumes/cat/bronze/xray_images/train/normal/IM-0115-0001.jpeg")
    assert d == a
    # the id depends on split, label and name only, not on the mount point
    assert identity.identify("/elsewhere/train/NORMAL/IM-0115-0001.jpeg").image_id == a.image_id
    assert len({a.image_id, b.image_id, c.image_id}) == 3
    assert a.image_id == identity.image_id_for("train", "NORMAL", "IM-0115-0001.jpeg")
    assert len(a.image_id) == 32 and int(a.image_id, 16) >= 0


def test_identity_rule_2_takes_the_site_within_the_source_not_the_mount():
    from cxrlake.medallion import identity

    local = identity.identify("/data/hospital/site1/train/NORMAL/a.jpeg", "/data/hospital")
    volume = identity.identify(
        "dbfs:/Volumes/cat/bronze/hospital/site1/train/NORMAL/a.jpeg",
        "/Volumes/cat/bronze/hospital",
    )
    assert local == volume
    assert local.image_id == identity.image_id_for("hospital/site1/train", "NORMAL", "a.jpeg")
    other = identity.identify("/data/hospital/site2/train/NORMAL/a.jpeg", "/data/hospital")
    assert other.image_id != local.image_id
    # no site (the split folder is the source): rule 2 gives rule 1's id
    flat = identity.identify("/x/chest_xray_fullres/NORMAL/a.jpeg", "/x/chest_xray_fullres")
    assert flat.image_id == identity.identify("/x/chest_xray_fullres/NORMAL/a.jpeg").image_id
    # a source whose files bronze holds under rule-1 ids keeps rule 1; a new one follows rule 2
    path = "/data/hospital/site1/train/NORMAL/a.jpeg"
    legacy = pa.table({"file_path": [path], "image_id": [identity.identify(path).image_id]})
    assert identity.identity_roots(["/data/hospital"], legacy) == []
    assert identity.identity_roots(["/data/hospital", "/data/other"], legacy) == ["/data/other"]
    assert identity.identity_roots(["/data/hospital"], legacy.slice(0, 0)) == ["/data/hospital"]
    ids = identity.identify_paths([path, "/elsewhere/train/NORMAL/a.jpeg"], ["/data/hospital"])
    assert ids.column("image_id").to_pylist() == [
        local.image_id,
        identity.identify("/elsewhere/train/NORMAL/a.jpeg").image_id,
    ]


def test_label_of():
    assert identity.label_of("NORMAL") == 0
    assert identity.label_of("PNEUMONIA") == 1
    assert identity.label_of(None) is None


def test_bronze_batch_schema_and_hash():
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    batch = pa.RecordBatch.from_pydict(
        {
            "path": ["/s/train/PNEUMONIA/a.jpeg", "/s/other/b.png"],
            "modificationTime": pa.array([ts, ts], pa.timestamp("us", tz="UTC")),
            "length": pa.array([3, 0], pa.int64()),
            "content": pa.array([b"abc", b""], pa.binary()),
        }
    )
    out = transforms.bronze_batch(batch, "batch-1", ingested_at=ts)
    assert out.schema == schemas.BRONZE_METADATA
    rows = out.to_pylist()
    assert rows[0]["category"] == "PNEUMONIA" and rows[0]["dataset_split"] == "train"
    assert rows[1]["category"] is None and rows[1]["dataset_split"] == "other"
    assert rows[0]["content_sha256"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert rows[0]["ingestion_batch_id"] == "batch-1" and rows[0]["ingested_at"] == ts


@pytest.mark.parametrize(
    "layout",
    ["plain", "sliced", "chunked", "large_binary", "binary_view"],
)
def test_sha256_column_reads_the_arrow_buffers_in_place(layout):
    """Hashes taken from the buffers (offsets, slices, chunks, other binary layouts) equal
    hashlib's over each value; NULL stays NULL."""
    import hashlib

    from cxrlake.medallion.identity import sha256_column

    values = [b"abc", None, b"", bytes(range(256)) * 40, b"\xff\xd8\xff"]
    array = pa.array(values, pa.binary())
    expected = [None if v is None else hashlib.sha256(v).hexdigest() for v in values]
    if layout == "sliced":
        array, expected = array.slice(1, 3), expected[1:4]
    elif layout == "chunked":
        array = pa.chunked_array([array.slice(0, 2), array.slice(2)])
    elif layout == "large_binary":
        array = array.cast(pa.large_binary())
    elif layout == "binary_view":
        array = array.cast(pa.binary_view())
    assert sha256_column(array).to_pylist() == expected


def test_prediction_id_is_deterministic_and_sensitive_to_each_input():
    base = ("img", "model", "1.0", "sha")
    pid = identity.prediction_id(*base)
    assert pid == identity.prediction_id(*base)
    for i in range(4):
        changed = list(base)
        changed[i] = changed[i] + "x"
        assert identity.prediction_id(*changed) != pid


def _pairwise_auc(y, p):
    pos = [s for s, t in zip(p, y, strict=True) if t]
    neg = [s for s, t in zip(p, y, strict=True) if not t]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200).astype(bool)
    p = np.round(rng.random(200) * 0.5 + y * 0.3, 1)  # coarse rounding -> many ties
    assert metrics.roc_auc(y, p) == pytest.approx(_pairwise_auc(y, p), abs=1e-12)
    assert metrics.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def _predictions(rows):
    return pa.Table.from_pylist(
        [
            {
                "prediction_id": f"p{i}",
                "model_name": "m",
                "model_version": "1",
                "dataset_split": split,
                "true_label": t,
                "predicted_label": int(p >= 0.5),
                "prediction_probability": p,
            }
            for i, (split, t, p) in enumerate(rows)
        ]
    )


def test_model_performance_metrics_and_confusion_matrix():
    preds = _predictions(
        [
            ("train", 1, 0.9),  # tp
            ("train", 1, 0.8),  # tp
            ("train", 1, 0.2),  # fn
            ("train", 0, 0.7),  # fp
            ("train", 0, 0.1),  # tn
            ("train", 0, 0.3),  # tn
            ("val", 1, 0.6),
            ("incoming", None, 0.4),  # unlabelled: no row for this split
        ]
    )
    out = metrics.model_performance(preds, threshold=0.5)
    assert out.schema == schemas.GOLD_PERFORMANCE
    rows = {r["dataset_split"]: r for r in out.to_pylist()}
    assert set(rows) == {"train", "val"}
    t = rows["train"]
    assert t["total_samples"] == 6
    assert t["accuracy"] == pytest.approx(4 / 6)
    assert t["precision"] == pytest.approx(2 / 3)
    assert t["recall"] == pytest.approx(2 / 3)
    assert t["f1_score"] == pytest.approx(2 / 3)
    assert t["auc_roc"] == pytest.approx(
        _pairwise_auc([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.2, 0.7, 0.1, 0.3])
    )
    cm = json.loads(t["confusion_matrix"])
    assert cm["matrix"] == [[2, 1], [1, 2]] and cm["labels"] == ["NORMAL", "PNEUMONIA"]
    assert rows["val"]["auc_roc"] is None  # one class only

    # same predictions -> same evaluation ids; one more prediction -> a new id for that split
    def ids(table, threshold=0.5):
        out = metrics.model_performance(table, threshold=threshold).to_pylist()
        return {r["dataset_split"]: r["evaluation_id"] for r in out}

    again = ids(preds)
    assert again == {s: r["evaluation_id"] for s, r in rows.items()}
    more = pa.concat_tables([preds, _predictions([("val", 0, 0.1)] * 9)])
    changed = ids(more)
    assert changed["train"] == again["train"] and changed["val"] != again["val"]
    # the same predictions decided at another threshold (a site's) are a new evaluation
    assert set(ids(preds, threshold=0.3).values()).isdisjoint(again.values())


def test_listing_skips_fifo_without_opening_and_refuses_symlink_out_of_root(tmp_path):
    root = tmp_path / "src"
    (root / "train" / "NORMAL").mkdir(parents=True)
    (root / "train" / "NORMAL" / "a.jpeg").write_bytes(b"x")
    (root / ".hidden").write_bytes(b"x")
    os.mkfifo(root / "train" / "NORMAL" / "pipe.jpeg")
    outside = tmp_path / "outside.jpeg"
    outside.write_bytes(b"y")
    os.symlink(outside, root / "train" / "NORMAL" / "link_out.jpeg")
    os.symlink(root / "train" / "NORMAL" / "a.jpeg", root / "train" / "NORMAL" / "link_in.jpeg")
    items = list(listing.walk(root))
    files = {os.path.basename(i.path) for i in items if isinstance(i, listing.SourceFile)}
    rejected = {
        os.path.basename(i.path): i.reason for i in items if isinstance(i, listing.Rejected)
    }
    assert files == {"a.jpeg", "link_in.jpeg"}
    assert rejected["pipe.jpeg"] == "not a regular file (fifo)"
    assert rejected["link_out.jpeg"].startswith("symlink leaves the source root")
    with pytest.raises(OSError, match="not a regular file"):
        listing.read_regular_file(str(root / "train" / "NORMAL" / "pipe.jpeg"))


def test_read_regular_file_enforces_size_limit(tmp_path):
    f = tmp_path / "big.jpeg"
    f.write_bytes(b"\0" * 2048)
    assert listing.read_regular_file(str(f), max_bytes=2048) == b"\0" * 2048
    with pytest.raises(OSError, match="exceeds"):
        listing.read_regular_file(str(f), max_bytes=1024)


def test_sample_per_label_is_deterministic_and_stable(tmp_path):
    def files(names):
        return [
            listing.SourceFile(
                f"/s/train/{lab}/{n}", 1, 0, identity.identify(f"/s/train/{lab}/{n}")
            )
            for lab in ("NORMAL", "PNEUMONIA")
            for n in names
        ]

    first = listing.sample_per_label(files([f"{i}.jpeg" for i in range(50)]), 5)
    assert len(first) == 10
    assert first == listing.sample_per_label(
        list(reversed(files([f"{i}.jpeg" for i in range(50)]))), 5
    )
    # adding files keeps every previously sampled file that still ranks in the top N
    bigger = listing.sample_per_label(files([f"{i}.jpeg" for i in range(60)]), 5)
    new = {f.path for f in bigger} - {f.path for f in first}
    assert all(int(os.path.basename(p).split(".")[0]) >= 50 for p in new)
    with pytest.raises(ValueError):
        listing.sample_per_label(first, 0)


def test_table_specs_cover_the_issue_columns():
    required = {
        schemas.BRONZE: {
            "image_id": pa.string(),
            "filename": pa.string(),
            "category": pa.string(),
            "dataset_split": pa.string(),
            "file_path": pa.string(),
            "file_size_bytes": pa.int64(),
            "ingested_at": schemas.TS,
            "ingestion_batch_id": pa.string(),
        },
        schemas.PREDICTIONS: {
            "prediction_id": pa.string(),
            "predicted_label": pa.int32(),
            "prediction_probability": pa.float64(),
            "confidence_score": pa.float64(),
            "true_label": pa.int32(),
            "is_correct": pa.bool_(),
            "prediction_date": pa.date32(),
        },
    }
    for spec, cols in required.items():
        for name, typ in cols.items():
            assert spec.arrow_schema.field(name).type == typ, (spec.qualified_name, name)
    assert (
        schemas.BRONZE.path("/lh", "pilot")
        == "/lh/healthcare_catalog_pilot/bronze/kaggle_xray_metadata"
    )
    with pytest.raises(ValueError, match="invalid env"):
        schemas.catalog_path("/lh", "../prod")


def test_reading_refuses_a_file_swapped_after_listing(tmp_path):
    root = tmp_path / "src" / "train" / "NORMAL"
    root.mkdir(parents=True)
    (root / "a.jpeg").write_bytes(b"listed bytes")
    (root / "b.jpeg").write_bytes(b"listed bytes too")
    outside = tmp_path / "outside.jpeg"
    outside.write_bytes(b"secret bytes")
    a, b = sorted(
        (i for i in listing.walk(tmp_path / "src") if isinstance(i, listing.SourceFile)),
        key=lambda f: f.path,
    )
    assert listing.read_source_file(a) == b"listed bytes"
    os.unlink(a.path)
    os.symlink(outside, a.path)  # swapped for a symlink to a file outside the source
    with pytest.raises(OSError, match="replaced by a symlink after listing"):
        listing.read_source_file(a)
    (root / "new.tmp").write_bytes(b"another file")
    os.replace(root / "new.tmp", b.path)  # a different file (inode) at the listed path
    with pytest.raises(OSError, match="replaced by another file after listing"):
        listing.read_source_file(b)


def test_printable_escapes_control_characters_and_undecodable_bytes():
    from cxrlake.medallion.identity import printable

    assert printable("a\nb\r\x1b[2J\u2028c") == "a\\nb\\r\\x1b[2J\\u2028c"
    assert printable(os.fsdecode(b"img\xff.jpeg")) == "img\\udcff.jpeg"
    assert printable("Überweisung é.jpeg") == "Überweisung é.jpeg"
