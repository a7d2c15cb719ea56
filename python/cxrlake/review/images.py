"""Image bytes for the browser, the same on every engine: JPEG and PNG as they are, a DICOM
film rendered by the core as a grayscale PNG, and the sandboxed read of a source file."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from cxrlake._api import decode
from cxrlake.png import grayscale_png
from cxrlake.review.tables import ReviewError

MAX_IMAGE_BYTES = 64 * 1024 * 1024


def sniff_image_type(head: bytes) -> str | None:
    """``image/jpeg`` or ``image/png`` from the magic bytes; None otherwise."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def servable_image(data: bytes) -> tuple[bytes, str]:
    """What the browser is sent for an image's bytes, and its type: JPEG and PNG as they are; a
    DICOM film rendered by the core exactly as the pipeline decodes it (Modality LUT, the
    file's window or its full range, MONOCHROME1 inverted, 8-bit) as a grayscale PNG, so the
    app's window/level acts on the grey levels the model saw. Raises `ReviewError` (415) for
    anything else, or a DICOM file the core cannot decode (naming why)."""
    kind = sniff_image_type(data[:8])
    if kind is not None:
        return data, kind
    if data[128:132] != b"DICM":
        raise ReviewError("not a JPEG, PNG or DICOM image", 415)
    row = decode([data]).to_pylist()[0]
    if row["error"] is not None:
        raise ReviewError(f"DICOM film cannot be rendered: {row['error']}", 415)
    return grayscale_png(row["pixels"], row["width"], row["height"]), "image/png"


def inside(path: str, roots: Sequence[str]) -> bool:
    """Whether the canonical ``path`` lies under one of the canonical ``roots``."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def read_sandboxed(path: str, roots: Sequence[str]) -> bytes:
    """Read a regular file whose real location is under ``roots`` (symlinks and ``..`` judged by
    where they point). Raises `ReviewError` (403 outside, 404 missing, 415 not a file)."""
    real = os.path.realpath(path)
    if not inside(real, roots):
        raise ReviewError("image outside the lakehouse and its source folders", 403)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ReviewError("image file not found", 404) from None
    except OSError as e:
        raise ReviewError(f"image cannot be opened: {e.strerror}", 403) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReviewError("image is not a regular file", 415)
        if st.st_size > MAX_IMAGE_BYTES:
            raise ReviewError("image exceeds 64 MiB", 415)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


__all__ = ["inside", "read_sandboxed", "servable_image", "sniff_image_type"]
