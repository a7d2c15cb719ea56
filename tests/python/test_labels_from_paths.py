"""A backslash is part of a file name, not a folder separator (issue 25: a PNEUMONIA film named
``NORMAL\\x.jpeg`` was stored with the label NORMAL)."""

from __future__ import annotations

from cxrlake.medallion.identity import identify


def test_a_backslash_in_a_file_name_does_not_change_the_label():
    got = identify("/data/chest_xray/train/PNEUMONIA/NORMAL\\x.jpeg")
    assert got.category == "PNEUMONIA"
    assert got.filename == "NORMAL\\x.jpeg"
    assert got.dataset_split == "train"
    # an unlabelled folder holding a name with backslashes stays unlabelled
    other = identify("/data/batch/PNEUMONIA\\..\\NORMAL\\y.jpeg")
    assert other.category is None and other.dataset_split == "batch"
    # URIs split on '/' as before
    uri = identify("dbfs:/Volumes/c/s/v/train/NORMAL/a.jpeg")
    assert (uri.category, uri.filename, uri.dataset_split) == ("NORMAL", "a.jpeg", "train")
