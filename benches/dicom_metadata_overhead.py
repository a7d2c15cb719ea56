"""What the DICOM metadata step costs a batch without DICOM files, measured side by side.

One process, one run, best of ``--rounds`` per variant (the machine is shared and noisy), on the
same in-memory JPEG batch:

- the ``cxrlake.dicom_metadata`` kernel alone (bronze calls it on every row; a non-DICOM row costs
  a look at four bytes);
- ``medallion.transforms.bronze_batch`` (identity, hashes and the kernel);
- ``medallion.transforms.dicom_silver_metadata`` (silver's DICOM rule; no key needed here);
- ``cxrlake.decode`` of the same images (the work silver does per image anyway).

Prints the ratios of the two DICOM steps to their stage (kernel / bronze, rule / decode).

    python benches/dicom_metadata_overhead.py --images ../shared/data/chest_xray/train/NORMAL
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

import cxrlake
from cxrlake.medallion import transforms


def best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG files")
    parser.add_argument("--count", type=int, default=256, help="images per batch")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    paths = paths[: args.count]
    contents = pa.array([p.read_bytes() for p in paths], pa.binary())
    files = pa.table(
        {
            "path": [f"/source/train/NORMAL/{os.path.basename(p)}" for p in paths],
            "modificationTime": pa.array([0] * len(paths), pa.timestamp("us", tz="UTC")),
            "length": pa.array([p.stat().st_size for p in paths], pa.int64()),
            "content": contents,
        }
    )
    bronze = transforms.bronze_batch(files, "bench")
    kernel = best(lambda: cxrlake.dicom_metadata(contents), args.rounds)
    stage = best(lambda: transforms.bronze_batch(files, "bench"), args.rounds)
    rule = best(lambda: transforms.dicom_silver_metadata(bronze), args.rounds)
    decode = best(lambda: cxrlake.decode(contents), max(1, args.rounds // 3))
    mb = contents.nbytes / 1e6
    print(f"{len(paths)} JPEG files, {mb:.1f} MB, best of {args.rounds}")
    print(f"dicom_metadata kernel      {kernel * 1e3:9.3f} ms")
    print(
        f"bronze_batch               {stage * 1e3:9.3f} ms   kernel / bronze = {kernel / stage:.4f}"
    )
    print(f"dicom_silver_metadata      {rule * 1e3:9.3f} ms")
    print(
        f"decode                     {decode * 1e3:9.3f} ms   rule / decode = {rule / decode:.5f}"
    )


if __name__ == "__main__":
    main()
