"""Source listing: walk image folders without opening anything that is not a regular file.

``os.scandir`` + ``lstat``: FIFOs, sockets and devices are reported (never opened, so they cannot
hang the pipeline); symlinks are followed only when they resolve to a regular file inside the
source root. Hidden entries (names starting with ``.``) are skipped silently; files whose names
are not image names (`cxrlake.files.is_image_name`, the filter ``cxrlake predict`` uses, e.g.
``notes.txt``) are yielded as `Skipped`: counted, never stored nor quarantined, except a regular
file without an extension whose first bytes are DICOM's (`cxrlake.files.sniff_dicom`, opened
``O_NOFOLLOW`` and checked to be the file listed). A name that is not valid UTF-8 is reported
(the tables hold text), shown with its undecodable bytes escaped.

Reading (`read_source_file`) opens what the listing saw and nothing else: ``O_NOFOLLOW`` on the
path that was listed (a symlink's resolved target), and the device and inode of the opened file
must equal those the listing recorded, so a file swapped for a symlink or another file between
listing and reading is refused, not followed.

The pipeline's ``listing`` view of the rules is `listing_table`; `read_binary_files` reads a
group of listed files into the ``binaryFile`` shape `cxrlake.medallion.transforms.bronze_batch`
takes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.files import has_no_extension, is_image_name, sniff_dicom
from cxrlake.medallion import identity, rules, schemas

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this (bytes) are quarantined at listing, never read into memory."""


@dataclass(frozen=True)
class SourceFile:
    """A regular file found under a source root."""

    path: str  # absolute path (the symlink's own path when it is a link)
    size: int  # bytes
    mtime_us: int  # modification time, microseconds since the epoch (UTC)
    identity: identity.ImageIdentity
    device: int = -1  # st_dev of the listed file (of the target for a symlink)
    inode: int = -1  # st_ino of the listed file (of the target for a symlink)
    open_path: str = ""  # what to open: the path itself, or a symlink's resolved target


@dataclass(frozen=True)
class Rejected:
    """An entry that is not ingested, with the reason (goes to the quarantine table)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A file whose name is not an image name (`cxrlake.files.is_image_name`): not ingested."""

    path: str


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _limit(max_bytes: int) -> str:
    mib = 1024 * 1024
    return f"{max_bytes // mib} MiB" if max_bytes % mib == 0 else f"{max_bytes} bytes"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk(
    root: str | os.PathLike[str], identity_rule_2: bool = False
) -> Iterator[SourceFile | Rejected | Skipped]:
    """Yield every file under ``root`` in sorted path order (deterministic). With
    ``identity_rule_2`` the files' sites within ``root`` enter their image ids
    (`cxrlake.medallion.identity.identify`)."""
    root = os.path.abspath(os.fspath(root))
    identity_root = root if identity_rule_2 else None
    real_root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source is not a directory: {root}")
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Rejected(directory, f"cannot list directory: {e.strerror or e}")
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                entry.path.encode("utf-8")
            except UnicodeEncodeError:
                yield Rejected(identity.printable(entry.path), "file name is not valid UTF-8")
                continue
            open_path = entry.path
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(entry.path)
                    if not _within(target, real_root):
                        yield Rejected(entry.path, f"symlink leaves the source root: {target}")
                        continue
                    st = os.stat(target)
                    open_path = target
                    if stat.S_ISDIR(st.st_mode):
                        continue  # never follow directory links (cycles)
            except OSError as e:
                yield Rejected(entry.path, f"cannot stat: {e.strerror or e}")
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(entry.path)
            elif not is_image_name(entry.name) and not (
                stat.S_ISREG(st.st_mode)
                and has_no_extension(entry.name)
                and sniff_dicom(open_path, (st.st_dev, st.st_ino))
            ):
                yield Skipped(entry.path)
            elif stat.S_ISREG(st.st_mode):
                yield SourceFile(
                    entry.path,
                    st.st_size,
                    st.st_mtime_ns // 1000,
                    identity.identify(entry.path, identity_root),
                    st.st_dev,
                    st.st_ino,
                    open_path,
                )
            else:
                yield Rejected(entry.path, f"not a regular file ({_kind(st.st_mode)})")
        stack.extend(reversed(subdirs))


def sample_per_label(files: list[SourceFile], n: int, seed: str = "cxrlake") -> list[SourceFile]:
    """Deterministic sample of at most ``n`` files per (dataset_split, category).

    Files are ranked by sha256(seed + image_id), so the sample does not depend on listing order
    and adding files to a large source changes it only where a new file ranks in the top ``n``.
    """
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    groups: dict[tuple[str, str | None], list[SourceFile]] = {}
    for f in files:
        groups.setdefault((f.identity.dataset_split, f.identity.category), []).append(f)
    chosen: list[SourceFile] = []
    for group in groups.values():
        group.sort(key=lambda f: hashlib.sha256((seed + f.identity.image_id).encode()).digest())
        chosen.extend(group[:n])
    chosen.sort(key=lambda f: f.path)
    return chosen


def read_source_file(source: SourceFile, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read the bytes of a listed file, refusing anything but the file the listing saw.

    Raises ``OSError`` with a readable message: a symlink where the listing saw a file, another
    file (device or inode changed), not a regular file, or larger than ``max_bytes``.
    """
    return read_regular_file(
        source.open_path or source.path,
        max_bytes,
        expected=(source.device, source.inode) if source.inode >= 0 else None,
    )


def read_regular_file(
    path: str, max_bytes: int = MAX_FILE_BYTES, expected: tuple[int, int] | None = None
) -> bytes:
    """Read a file's bytes, refusing anything that is not (any longer) a regular file.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``, so a file swapped for a
    symlink or a FIFO after the listing is neither followed nor blocks; with ``expected``
    (device, inode), a different file at ``path`` is refused too. Raises ``OSError`` with a
    readable message.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "replaced by a symlink after listing") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})")
        if expected is not None and (st.st_dev, st.st_ino) != expected:
            raise OSError(errno.ESTALE, "replaced by another file after listing")
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"file exceeds {_limit(max_bytes)} limit")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise OSError(errno.EFBIG, f"file exceeds {_limit(max_bytes)} limit")
        return data
    finally:
        os.close(fd)


def timestamps_us(values: list[int | None]) -> pa.Array:
    """Microseconds since the epoch (UTC) as the tables' timestamp type; None stays NULL."""
    return pa.array(values, pa.int64()).cast(schemas.TS)


def listing_table(
    chosen: list[SourceFile], rejected: dict[str, str], roots: tuple[str, ...]
) -> pa.Table:
    """The ``listing`` view of the rules (`rules.LISTING_SCHEMA`): the ``chosen`` files, then the
    ``rejected`` entries (path -> reason) sorted by path; image ids by the identity rules
    (``roots``: the sources of identity rule 2)."""
    held = sorted(rejected)
    paths = pa.array([f.path for f in chosen] + held, pa.string())
    ids = identity.identify_paths(paths, roots).column("image_id")
    return pa.table(
        {
            "file_path": paths,
            "image_id": ids,
            "file_size_bytes": pa.array([f.size for f in chosen] + [None] * len(held), pa.int64()),
            "source_modified_at": timestamps_us([f.mtime_us for f in chosen] + [None] * len(held)),
            "reject_reason": pa.array(
                [None] * len(chosen) + [rejected[p] for p in held], pa.string()
            ),
        },
        schema=rules.LISTING_SCHEMA,
    )


def accepted_count(listing: pa.Table) -> int:
    """Listing rows bronze may take: not rejected, and their image id claimed by no other."""
    counts = pc.value_counts(listing.column("image_id"))
    single = counts.field("values").filter(pc.equal(counts.field("counts"), 1))
    ok = listing.filter(pc.is_null(listing.column("reject_reason")))
    return int(pc.sum(pc.is_in(ok.column("image_id"), single).cast(pa.int64())).as_py() or 0)


def read_binary_files(files: list[SourceFile]) -> tuple[pa.Table | None, dict[str, str]]:
    """Read ``files`` (`read_source_file`) into a table shaped as Spark's ``binaryFile`` source
    (``path``, ``modificationTime``, ``length``, ``content``; None when none could be read), and
    the files that could not be read: path -> the OS's reason."""
    unreadable: dict[str, str] = {}
    read: list[tuple[SourceFile, bytes]] = []
    for f in files:
        try:
            read.append((f, read_source_file(f)))
        except OSError as e:
            unreadable[f.path] = e.strerror or str(e)
    if not read:
        return None, unreadable
    table = pa.table(
        {
            "path": pa.array([f.path for f, _ in read], pa.string()),
            "modificationTime": timestamps_us([f.mtime_us for f, _ in read]),
            "length": pa.array([len(content) for _, content in read], pa.int64()),
            "content": pa.array([content for _, content in read], pa.binary()),
        }
    )
    return table, unreadable
