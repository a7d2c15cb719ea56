"""Which files count as images: the one filter used by ``cxrlake predict`` and the pipeline.

A file is an image candidate when its name is not hidden (does not start with ``.``) and ends in
one of `IMAGE_SUFFIXES` (case-insensitive). Everything else found in a folder is *skipped*:
counted and reported, never scored, stored or quarantined. A file named explicitly by the user
is always an image candidate, whatever its name: the core then says what is wrong with it.

DICOM archives often store files without any extension. The pipeline (both engines) also takes
a file whose name has no extension when its content starts like a DICOM Part 10 file (``DICM``
at byte 128, `sniff_dicom`); a file with any other extension stays skipped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "IMAGE_SUFFIXES",
    "FileSelection",
    "has_no_extension",
    "is_dicom_head",
    "is_image_name",
    "select_images",
    "skip_summary",
    "sniff_dicom",
    "write_text_atomically",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")
"""File name endings treated as images when found in a folder (compared lowercased): the
formats the core decodes (it detects the format from the bytes, not from the name)."""


def is_image_name(name: str | os.PathLike[str]) -> bool:
    """Whether a file found in a folder is an image candidate (by its base name only)."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def has_no_extension(name: str | os.PathLike[str]) -> bool:
    """Whether a file's base name has no extension (and is not hidden): such a file is an image
    candidate when its content is DICOM (`sniff_dicom`)."""
    base = os.path.basename(os.fspath(name))
    return bool(base) and not base.startswith(".") and os.path.splitext(base)[1] == ""


def is_dicom_head(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a DICOM Part 10 file: a 128-byte
    preamble, then ``DICM`` (the test the core applies)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_dicom(path: str | os.PathLike[str], expected: tuple[int, int] | None = None) -> bool:
    """Whether the regular file at ``path`` is a DICOM Part 10 file, from its first 132 bytes.

    Opened ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``: a symlink, a FIFO or a device
    is never followed, waited on or read; with ``expected`` (device, inode) another file at
    ``path`` is refused too. Anything that cannot be read this way is not DICOM (False)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        if expected is not None and (st.st_dev, st.st_ino) != expected:
            return False
        return is_dicom_head(os.pread(fd, 132, 0))
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass
class FileSelection:
    """Result of `select_images`: paths to score, files skipped, named paths that are missing."""

    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def select_images(inputs: Iterable[str | os.PathLike[str]]) -> FileSelection:
    """Expand files and folders into image paths.

    Folders are walked recursively in sorted order (symlinked folders are not entered, hidden
    folders are skipped); their files go through `is_image_name`, and a file without an extension
    is taken when its content is DICOM (`sniff_dicom`), as the pipeline's listing does. Files
    named explicitly are
    kept whatever their name; named paths that do not exist are listed in ``missing`` (and kept
    in ``images``, so the caller can report them row by row in input order).
    """
    selection = FileSelection()
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    full = os.path.join(folder, name)
                    if is_image_name(name) or (has_no_extension(name) and sniff_dicom(full)):
                        selection.images.append(full)
                    else:
                        selection.skipped.append(full)
        else:
            if not os.path.lexists(path):
                selection.missing.append(path)
            selection.images.append(path)
    return selection


def skip_summary(skipped: list[str], examples: int = 3) -> str:
    """``skipped 2 files that are not images (.jpeg/...): a.txt, b.doc`` ('' when none)."""
    if not skipped:
        return ""
    names = ", ".join(os.path.basename(p) for p in skipped[:examples])
    more = f" and {len(skipped) - examples} more" if len(skipped) > examples else ""
    what = "file that is not an image" if len(skipped) == 1 else "files that are not images"
    kinds = "/".join(IMAGE_SUFFIXES)
    return f"skipped {len(skipped)} {what} ({kinds}): {names}{more}"


def write_text_atomically(path: str | os.PathLike[str], text: str) -> str:
    """Write ``text`` to ``path`` in full or not at all: a temp file beside it, then a rename.

    A path that exists and is not a regular file (``/dev/stdout``, a FIFO, a device) is written
    directly: renaming over it would replace the device node itself. Returns the path.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return path
