"""Every spelling of a path outside the sandbox roots gets exactly ``outside sandbox roots:
<path>`` from the Python API, whatever exists outside (issue 25: ``<outside>/../../<allowed
file>`` answered "Not a directory", "file not found" or a score depending on the outside path)."""

from __future__ import annotations

import os
import shutil

import pytest

import cxrlake


@pytest.fixture()
def layout(tmp_path, shared_data):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    jpeg = sorted((shared_data / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copyfile(jpeg, root / "inside.jpeg")
    (tmp_path / "outside_file").write_bytes(b"secret")
    (tmp_path / "outside_dir" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "outside_dir", root / "out")
    return tmp_path, root


def test_outside_spellings_get_one_answer_from_every_kernel(layout, tiny_model_path):
    outside, root = layout
    spellings = [
        f"{outside}/outside_dir/sub/../../root/inside.jpeg",
        f"{outside}/outside_dir/../root/inside.jpeg",
        f"{outside}/outside_file/../root/inside.jpeg",
        f"{outside}/missing/../root/inside.jpeg",
        f"{root}/out/../root/inside.jpeg",
        f"{root}/../outside_dir/../root/inside.jpeg",
        f"{outside}/outside_file",
        f"{outside}/missing",
    ]
    roots = [str(root)]
    expected = [f"outside sandbox roots: {p}" for p in spellings]
    assert cxrlake.decode(spellings, roots=roots).column("error").to_pylist() == expected
    features = cxrlake.features(spellings, roots=roots, embedding=False)
    assert features.column("error").to_pylist() == expected
    scores = cxrlake.predict(spellings, model=tiny_model_path, roots=roots)
    assert scores.column("error").to_pylist() == expected
    assert scores.column("probability").null_count == len(spellings)


def test_inside_spellings_still_read(layout):
    _outside, root = layout
    paths = [f"{root}/inside.jpeg", f"{root}/sub/../inside.jpeg", f"{root}/../root/inside.jpeg"]
    errors = cxrlake.decode(paths, roots=[str(root)]).column("error").to_pylist()
    assert errors == [None, None, None]
