"""Current labels for training: folder labels with the radiologists' corrections applied.

`cxrlake train --labels-from LAKEHOUSE` relabels each training file whose image has a current
``silver.label_history`` row from a radiologist, and says how many labels differ. A file's image
is the bronze row of its path (so it has the id the pipeline gave it, whichever identity rule its
source follows); a file bronze never saw gets `cxrlake.medallion.identity.identify`'s rule-1 id.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cxrlake.medallion.identity import identify
from cxrlake.medallion.schemas import BRONZE, SILVER
from cxrlake.review.tables import FOLDER_SOURCE, HISTORY, judged_other_bytes
from cxrlake.training.data import LabelledImage, list_labelled_images


def current_radiologist_labels(
    lakehouse: str | os.PathLike[str], env: str = "dev"
) -> dict[str, int]:
    """image_id -> current label, for images whose current label comes from a radiologist."""
    from cxrlake.lakehouse.storage import Lakehouse  # the `local` extra (deltalake)

    lh = Lakehouse(lakehouse, env)
    if not os.path.isdir(lh.catalog):
        raise FileNotFoundError(f"no lakehouse catalog at {lh.catalog}")
    rows = lh.read(HISTORY).to_pylist()
    silver = lh.read(SILVER, ["image_id", "content_sha256"])
    contents = dict(
        zip(silver["image_id"].to_pylist(), silver["content_sha256"].to_pylist(), strict=True)
    )
    # a label given on earlier bytes of the file no longer stands for the bytes trained on
    return {
        r["image_id"]: int(r["label"])
        for r in rows
        if r["is_current"]
        and r["source"] != FOLDER_SOURCE
        and r["label"] is not None
        and not judged_other_bytes(r, contents.get(r["image_id"]))
    }


def _image_ids_by_path(lakehouse: str | os.PathLike[str], env: str) -> dict[str, str]:
    """Absolute file path -> the image id bronze recorded for it."""
    from cxrlake.lakehouse.storage import Lakehouse  # the `local` extra (deltalake)

    rows = Lakehouse(lakehouse, env).read(BRONZE, ["file_path", "image_id"])
    return dict(
        zip(rows.column("file_path").to_pylist(), rows.column("image_id").to_pylist(), strict=True)
    )


def apply_current_labels(
    records: Sequence[LabelledImage], lakehouse: str | os.PathLike[str], env: str = "dev"
) -> tuple[list[LabelledImage], int]:
    """The training files with the current labels; returns them and how many labels differ from
    the folder ones."""
    corrected = current_radiologist_labels(lakehouse, env)
    ids = _image_ids_by_path(lakehouse, env)
    out: list[LabelledImage] = []
    changed = 0
    for record in records:
        path = os.path.abspath(os.fspath(record.path))
        label = corrected.get(ids.get(path) or identify(path).image_id)
        if label is not None and label != record.label:
            record = dataclasses.replace(record, label=label)
            changed += 1
        out.append(record)
    return out, changed


def label_overrides(
    data: str | os.PathLike[str], lakehouse: str | os.PathLike[str], env: str = "dev"
) -> tuple[dict[str, int], int]:
    """For the training folder ``data``: path -> current label of every file whose current
    label differs from its folder label, and the number of files."""
    records = list_labelled_images(data)
    relabelled, _ = apply_current_labels(records, lakehouse, env)
    changed = {
        new.path: new.label
        for old, new in zip(records, relabelled, strict=True)
        if new.label != old.label
    }
    return changed, len(records)
