"""Where the report's data attribution comes from: the data, never a fixed text.

In order: files the user names (``--attribution``); else ``ATTRIBUTION``, ``ATTRIBUTION.txt`` or
``ATTRIBUTION.md`` in a source folder the pipeline read, or up to `PARENT_LEVELS` folders above
it; else, when every image's file name follows the Kermany et al. (2018) chest X-ray data set's
naming, that data set's CC BY 4.0 citation; else a note that no attribution is recorded.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

ATTRIBUTION_FILES = ("ATTRIBUTION", "ATTRIBUTION.txt", "ATTRIBUTION.md")
PARENT_LEVELS = 2
"""How many folders above a source folder are searched for an attribution file."""

KERMANY_HTML = (
    "Chest X-ray images: Kermany D., Zhang K., Goldbaum M. (2018), “Labeled Optical Coherence "
    "Tomography (OCT) and Chest X-Ray Images for Classification”, Mendeley Data, v2, "
    '<a href="https://doi.org/10.17632/rscbjbr9sj.2">doi:10.17632/rscbjbr9sj.2</a>, licensed '
    '<a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a> (the same images as the '
    "Kaggle “Chest X-Ray Images (Pneumonia)” data set)."
)

KERMANY_NAME = re.compile(
    r"^(?:(?:NORMAL2-)?IM-\d{4}-\d{4}(?:-\d{4})?|person\d+_(?:bacteria|virus)_\d+)\.jpe?g$",
    re.IGNORECASE,
)
"""File names of the Kermany et al. chest X-ray set (``IM-0115-0001``, ``person1_virus_6``)."""


@dataclass(frozen=True)
class Attribution:
    """HTML of the attribution and where it came from (said in the report)."""

    html: str
    source: str


def _text_to_html(text: str) -> str:
    escaped = html.escape(text.strip())
    linked = re.sub(r"(https?://[^\s<&]+)", r'<a href="\1">\1</a>', escaped)
    return linked.replace("\n\n", "</p><p>").replace("\n", "<br>")


def _found_files(sources: Iterable[str]) -> list[str]:
    found: list[str] = []
    for source in sources:
        folder = os.path.abspath(source)
        for _ in range(PARENT_LEVELS + 1):
            hits = [os.path.join(folder, n) for n in ATTRIBUTION_FILES]
            hits = [h for h in hits if os.path.isfile(h)]
            if hits:
                if hits[0] not in found:
                    found.append(hits[0])
                break
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    return found


def resolve(files: list[str] | None, sources: list[str], image_names: Iterable[str]) -> Attribution:
    """The attribution for a report (see the module docstring). ``files``: named by the user
    (must be readable); ``sources``: the pipeline's source folders; ``image_names``: the base
    names of the images in silver."""
    chosen = list(files or []) or _found_files(sources)
    if chosen:
        parts = []
        for path in chosen:
            with open(path, encoding="utf-8") as f:
                parts.append(f"<p>{_text_to_html(f.read())}</p>")
        shown = ", ".join(html.escape(os.path.basename(p)) for p in chosen)
        return Attribution("".join(parts), f"from {shown}")
    names = [n for n in image_names if n]
    if names and all(KERMANY_NAME.match(n) for n in names):
        return Attribution(
            f"<p>{KERMANY_HTML}</p>",
            "recognised from the file names of the Kermany et al. data set",
        )
    return Attribution(
        "<p>No attribution is recorded for these images. Put an ATTRIBUTION.txt file in the "
        "source folder, or pass <code>--attribution FILE</code>, to cite the data set here.</p>",
        "none recorded",
    )
