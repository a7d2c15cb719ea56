"""DICOM through the core kernels, against pydicom (with pylibjpeg where pydicom needs it).

The reference (``reference_gray``) applies the mapping documented in ``src/core/dicom.rs`` with
numpy on pydicom's ``pixel_array``: the Modality LUT Sequence (pydicom's ``apply_modality_lut``)
or rescale slope/intercept, the first VOI LUT Sequence item or
the first window (LINEAR, LINEAR_EXACT, SIGMOID) or the frame's full range, ``floor(v + 0.5)``,
MONOCHROME1 inverted; 3-sample images become luma as PIL ``convert("L")``.

Tolerances (stated once, used below):
- lossless syntaxes (uncompressed, deflated, RLE, JPEG lossless, JPEG 2000 lossless): exact;
- JPEG 2000 lossy: no pixel off by more than 1 gray level (OpenJPEG decodes on both sides; the
  codecs' wavelet rounding may differ by one stored value);
- JPEG baseline / extended: mean absolute difference <= 1 and max <= 8 gray levels (jpeg-decoder
  vs libjpeg: different IDCTs and chroma upsampling);
- 12-bit JPEG extended: no pixel off by more than 1 gray level (libjpeg-turbo here, pylibjpeg's
  libjpeg in pydicom: both IDCTs are accurate to a 12-bit value or so, then mapped to 8 bits);
- native YBR_FULL: the Y channel is the luma, pydicom converts to RGB first: max 2.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from dicom_support import dicom_json, find, identifying_strings
from PIL import Image

import cxrlake

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pydicom
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_modality_lut


LOSSLESS = [
    "CT_small.dcm",  # explicit VR LE, signed 16-bit, rescale, no window: full range
    "MR_small.dcm",  # signed 16-bit with a window
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG-LL.dcm",  # JPEG lossless, process 14
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless SV1, 8-bit
    "image_dfl.dcm",  # deflated explicit VR LE
    "emri_small.dcm",  # multi-frame, 12 of 16 bits: first frame
    "emri_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "RG1_UNCR.dcm",  # chest CR, 15-bit MONOCHROME1
    "RG1_J2KR.dcm",
    "RG3_J2KR.dcm",  # 10-bit MONOCHROME1
    "693_J2KR.dcm",  # signed 14-bit, rescale and window
    "MR2_J2KR.dcm",
    "vlut_04.dcm",  # VOI LUT Sequence
    "JPEG2000.dcm",
    "SC_rgb.dcm",  # RGB
    "SC_rgb_rle.dcm",
    "SC_rgb_16bit.dcm",
    "color-pl.dcm",  # planar RGB
    "US1_J2KR.dcm",  # JPEG 2000 lossless colour (RCT)
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless colour
]
J2K_LOSSY = ["RG1_J2KI.dcm", "RG3_J2KI.dcm", "693_J2KI.dcm", "MR2_J2KI.dcm"]
JPEG_LOSSY = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm", "examples_ybr_color.dcm"]
JPEG_12BIT = ["JPGExtended.dcm"]  # JPEG extended, 12-bit samples (process 4)

# File, and the start of the per-row error the core must give.
REFUSED = [
    ("rtplan.dcm", "DICOM file has no pixel data (SOP class RT Plan Storage"),
    ("test-SR.dcm", "DICOM file has no pixel data (SOP class"),
    ("waveform_ecg.dcm", "DICOM file has no pixel data (SOP class"),
    ("MR_small_jpeg_ls_lossless.dcm", "unsupported DICOM transfer syntax: JPEG-LS Lossless"),
    ("liver_1frame.dcm", "unsupported DICOM image: 1 bits allocated"),
    ("rtdose_1frame.dcm", "unsupported DICOM image: 32 bits allocated"),
    ("examples_palette.dcm", 'unsupported DICOM photometric interpretation: "PALETTE COLOR"'),
    ("MR_truncated.dcm", "truncated DICOM"),
    # A broken 12-bit JPEG (SOS with a spectral selection in a sequential frame); pydicom with
    # pylibjpeg refuses it too. JPGExtended.dcm is the repaired copy.
    ("JPEG-lossy.dcm", "corrupt JPEG in DICOM pixel data: Invalid SOS parameters for sequential"),
    (
        "SC_rgb_jpeg.dcm",
        "corrupt DICOM: implicit VR data set under an explicit VR transfer syntax",
    ),
]


def _first(value) -> float:
    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def reference_gray(path: Path) -> np.ndarray:
    """The documented DICOM-to-8-bit mapping, on pydicom's pixels (first frame)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if int(ds.SamplesPerPixel) == 3:
        rgb = arr.astype(np.uint32)
        if ds.BitsAllocated == 16:
            rgb = rgb >> 8
        luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
        return (luma >> 16).astype(np.uint8)
    if "ModalityLUTSequence" in ds:
        m = apply_modality_lut(arr, ds).astype(np.float64)
    else:
        m = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
            ds.get("RescaleIntercept", 0) or 0
        )
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        lut = np.asarray(item.LUTData, dtype=np.float64)
        first_mapped = int(item.LUTDescriptor[1])
        index = np.clip(np.floor(m).astype(np.int64) - first_mapped, 0, len(lut) - 1)
        lo, hi = lut.min(), lut.max()
        level = 255.0 * (lut[index] - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if function == "SIGMOID":
            level = 255.0 / (1.0 + np.exp(-4.0 * (m - c) / w))
        elif function == "LINEAR_EXACT":
            mid = ((m - c) / w + 0.5) * 255.0
            level = np.where(m <= c - w / 2, 0.0, np.where(m > c + w / 2, 255.0, mid))
        else:
            c, w = c - 0.5, w - 1.0
            with np.errstate(divide="ignore", invalid="ignore"):
                mid = ((m - c) / w + 0.5) * 255.0
            level = np.where(m <= c - w / 2, 0.0, np.where(m > c + w / 2, 255.0, mid))
    else:
        lo, hi = m.min(), m.max()
        level = 255.0 * (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    out = np.clip(np.floor(level + 0.5), 0, 255).astype(np.uint8)
    return 255 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def decode_one(image) -> np.ndarray:
    batch = cxrlake.decode([image], threads=1)
    error = batch.column("error")[0].as_py()
    assert error is None, error
    w, h = batch.column("width")[0].as_py(), batch.column("height")[0].as_py()
    return np.frombuffer(batch.column("pixels")[0].as_py(), np.uint8).reshape(h, w)


def diff(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    assert ours.shape == reference.shape
    return np.abs(ours.astype(np.int16) - reference.astype(np.int16))


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_syntaxes_match_pydicom_exactly(name):
    path = find(name)
    ours = decode_one(str(path))
    np.testing.assert_array_equal(ours, reference_gray(path), err_msg=name)


@pytest.mark.parametrize("name", J2K_LOSSY)
def test_jpeg2000_lossy_is_within_one_level_of_pydicom(name):
    path = find(name)
    assert diff(decode_one(str(path)), reference_gray(path)).max() <= 1, name


@pytest.mark.parametrize("name", JPEG_LOSSY)
def test_jpeg_baseline_is_close_to_pydicom(name):
    path = find(name)
    d = diff(decode_one(str(path)), reference_gray(path))
    assert d.mean() <= 1.0 and d.max() <= 8, (name, d.mean(), d.max())


@pytest.mark.parametrize("name", JPEG_12BIT)
def test_12_bit_jpeg_extended_is_within_one_level_of_pydicom(name):
    path = find(name)
    assert pydicom.dcmread(path).BitsStored == 12
    d = diff(decode_one(str(path)), reference_gray(path))
    assert d.max() <= 1, (name, d.mean(), d.max())


def test_modality_lut_sequence_matches_pydicom_apply_modality_lut(tmp_path: Path):
    # mlut_18.dcm: signed 12-bit values through a 4096-entry Modality LUT (first value mapped
    # -2048). Its LUT is linear, so a rescale-free decoding looks the same; the pydicom-written
    # copy gets a non-monotonic LUT and a window in LUT output units, where only the LUT gives
    # the right pixels (the rescale path maps values 16x too small, all below the window).
    path = find("mlut_18.dcm")
    np.testing.assert_array_equal(decode_one(str(path)), reference_gray(path))
    ds = pydicom.dcmread(path)
    item = ds.ModalityLUTSequence[0]
    ramp = np.arange(4096, dtype=np.uint32)
    lut = ((ramp * 16) ^ ((ramp & 0xFF) << 8)) & 0xFFFF  # tooth-shaped, not monotonic
    item.LUTData = [int(v) for v in lut]
    ds.WindowCenter, ds.WindowWidth = 30000, 40000
    changed = tmp_path / "mlut_nonlinear.dcm"
    ds.save_as(changed)
    reference = reference_gray(changed)
    assert reference.std() > 20  # the window spreads the LUT output
    np.testing.assert_array_equal(decode_one(str(changed)), reference)


def test_an_unusable_modality_lut_is_a_row_error(tmp_path: Path):
    ds = pydicom.dcmread(find("mlut_18.dcm"))
    ds.ModalityLUTSequence[0].LUTData = [0, 1, 2]
    changed = tmp_path / "mlut_short.dcm"
    ds.save_as(changed)
    batch = cxrlake.decode([str(changed)], threads=1)
    assert batch.column("error").to_pylist() == [
        "corrupt DICOM Modality LUT Sequence: 3 LUT Data entries for 4096 in the descriptor"
    ]


def _with_fragment(path: Path, tmp_path: Path, change) -> bytes:
    """Single-frame ``path`` with its codestream replaced by ``change(codestream)``."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([change(codestream)])
    out = tmp_path / "fragment.dcm"
    ds.save_as(out)
    return out.read_bytes()


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(tmp_path: Path):
    # The 8-bit JPEG codec (jpeg-decoder) has no scan limit of its own: 600 start-of-scan
    # segments exceed the JPEG budget (500 scans at most, whatever the size), counted before
    # decoding.
    def many_scans(fragment: bytes) -> bytes:
        end = fragment.rindex(b"\xff\xd9")
        return fragment[:end] + b"\xff\xda\x00\x02" * 600 + fragment[end:]

    data = _with_fragment(find("SC_rgb_jpeg_dcmtk.dcm"), tmp_path, many_scans)
    batch = cxrlake.decode([data], threads=1)
    assert batch.column("error").to_pylist() == [
        "JPEG has more than 500 progressive scans, the work limit for a 100x100 image "
        "(2e8 pixel-scans, at least 16 scans)"
    ]


@pytest.mark.parametrize(
    ("name", "codestream"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "JPEG frame (100x100, 3 components of 8 bits)"),
        ("US1_J2KR.dcm", "JPEG 2000 image (640x480, 3 components)"),
    ],
)
def test_a_codestream_larger_than_rows_and_columns_is_an_error_not_a_panic(
    name, codestream, tmp_path: Path
):
    # dicom-rs sizes the frame from Rows x Columns and copied a larger decoded codestream into it
    # unchecked (a panic; found by the decode_dicom fuzz target).
    data = _with(find(name), tmp_path, Rows=50, Columns=50)
    batch = cxrlake.decode([data], threads=1)
    assert batch.column("error").to_pylist() == [
        f"corrupt DICOM: the {codestream} is larger than Columns x Rows x SamplesPerPixel "
        "(50x50x3 of 8 bits)"
    ]


def test_a_jpeg2000_tile_bomb_is_refused_before_decoding(tmp_path: Path):
    # 1x1-pixel tiles: OpenJPEG keeps ~9 KB per tile (a 3.6-megapixel film in 8x8 tiles took
    # 530 MB more than in one tile); more than one tile per 4096 pixels is refused.
    def tiny_tiles(fragment: bytes) -> bytes:
        at = fragment.index(b"\xff\x4f\xff\x51") + 4 + 20  # SIZ: XTsiz, YTsiz, XTOsiz, YTOsiz
        tiles = (1).to_bytes(4, "big") * 2 + bytes(8)
        return fragment[:at] + tiles + fragment[at + 16 :]

    data = _with_fragment(find("MR_small_jp2klossless.dcm"), tmp_path, tiny_tiles)
    batch = cxrlake.decode([data], threads=1)
    assert batch.column("error").to_pylist() == [
        "JPEG 2000 codestream has 4096 tiles for a 64x64 image, the limit is one per 4096 "
        "pixels (or 16)"
    ]


def test_native_ybr_full_uses_the_luma_channel():
    path = find("SC_ybr_full_uncompressed.dcm")
    assert diff(decode_one(str(path)), reference_gray(path)).max() <= 2


def test_chest_film_jpeg2000_lossless_equals_the_uncompressed_copy():
    ours_j2k = decode_one(str(find("RG1_J2KR.dcm")))
    ours_raw = decode_one(str(find("RG1_UNCR.dcm")))
    assert ours_j2k.shape == (1955, 1841)
    np.testing.assert_array_equal(ours_j2k, ours_raw)
    # MONOCHROME1: the film's dense (bright) regions must come out bright, not inverted twice.
    assert ours_raw.std() > 20


@pytest.mark.parametrize(("name", "message"), REFUSED)
def test_other_objects_get_a_per_row_error_naming_them(name, message):
    batch = cxrlake.decode([str(find(name)), str(find("CT_small.dcm"))], threads=1)
    errors = batch.column("error").to_pylist()
    assert errors[0] is not None and errors[0].startswith(message), errors[0]
    assert errors[1] is None  # the good row in the same batch is kept


def test_detected_by_content_not_by_name(tmp_path: Path):
    source = find("MR_small.dcm")
    for name in ("image", "scan.jpeg", "IM0001.DCM"):
        shutil.copy(source, tmp_path / name)
    expected = decode_one(str(source))
    for name in ("image", "scan.jpeg", "IM0001.DCM"):
        np.testing.assert_array_equal(decode_one(str(tmp_path / name)), expected)
    np.testing.assert_array_equal(decode_one(source.read_bytes()), expected)


def test_every_kernel_treats_dicom_like_the_same_pixels_as_png(tiny_model_path):
    # Plugging DICOM in at the decode layer means preprocess, features and predict see exactly
    # the decoded 8-bit image: the same pixels as a lossless PNG give the same outputs.
    dicoms = [find("RG1_UNCR.dcm").read_bytes(), find("CT_small.dcm").read_bytes()]
    pngs = []
    for data in dicoms:
        buffer = io.BytesIO()
        Image.fromarray(decode_one(data)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    tensors_dcm, errors_dcm = cxrlake.preprocess(dicoms, model=tiny_model_path, threads=2)
    tensors_png, _ = cxrlake.preprocess(pngs, model=tiny_model_path, threads=2)
    assert errors_dcm.null_count == len(dicoms)
    np.testing.assert_array_equal(tensors_dcm, tensors_png)
    scored_dcm = cxrlake.predict(dicoms, model=tiny_model_path, threads=2)
    scored_png = cxrlake.predict(pngs, model=tiny_model_path, threads=2)
    assert scored_dcm.column("error").null_count == len(dicoms)
    assert scored_dcm.column("probability").equals(scored_png.column("probability"))
    feats_dcm = cxrlake.features(dicoms, model=tiny_model_path, threads=2, embedding=False)
    feats_png = cxrlake.features(pngs, model=tiny_model_path, threads=2, embedding=False)
    assert feats_dcm.column("error").null_count == len(dicoms)
    for name in feats_dcm.schema.names:
        assert feats_dcm.column(name).equals(feats_png.column(name)), name


def _with(ds_path: Path, tmp_path: Path, **changes) -> bytes:
    ds = pydicom.dcmread(ds_path)
    for key, value in changes.items():
        setattr(ds, key, value)
    out = tmp_path / "changed.dcm"
    ds.save_as(out)
    return out.read_bytes()


def test_pixel_limit_is_checked_from_the_header(tmp_path: Path):
    # A 60000x60000 header over 32 KB of pixel data: refused before any buffer is sized.
    bomb = _with(find("CT_small.dcm"), tmp_path, Rows=60000, Columns=60000)
    batch = cxrlake.decode([bomb], threads=1)
    assert batch.column("error").to_pylist() == ["image 60000x60000 exceeds 100 megapixel limit"]
    small = cxrlake.decode([find("CT_small.dcm").read_bytes()], threads=1, max_pixels=10_000)
    assert small.column("error").to_pylist() == ["image 128x128 exceeds 0.01 megapixel limit"]


def test_an_element_longer_than_the_file_is_refused_without_allocating_it():
    # A private OB element declaring 4 GiB in a file of 200 bytes: dicom-rs would allocate and
    # zero the declared length before reading it.
    meta_ts = b"1.2.840.10008.1.2.1\0"
    data = bytearray(128) + b"DICM"
    data += b"\x02\x00\x10\x00UI" + len(meta_ts).to_bytes(2, "little") + meta_ts
    data += b"\x09\x00\x10\x00OB\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + bytes(16)
    batch = cxrlake.decode([bytes(data)], threads=1)
    (error,) = batch.column("error").to_pylist()
    assert error.startswith("truncated DICOM: element (0009,0010) declares 4294967280 bytes"), error


# ---------------------------------------------------------------------------------------------
# De-identification (cxrlake.deid) of the metadata bronze keeps

DEID_FILES = ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "rtplan.dcm", "test-SR.dcm"]
TEST_KEY = b"a test key, not a real secret!!"


@pytest.mark.parametrize("name", DEID_FILES)
def test_no_name_id_date_or_uid_survives_deidentification(name):
    import json

    from cxrlake.deid import deidentify

    original = dicom_json(find(name))
    result = deidentify(original, TEST_KEY)
    text = json.dumps(result.metadata)
    leaked = sorted(s for s in identifying_strings(original) if s in text)
    assert not leaked, leaked
    assert result.metadata["00120062"]["Value"] == ["YES"]
    assert result.metadata["00120063"]["Value"][0].startswith("PS3.15")
    assert not any(int(tag[:4], 16) % 2 for tag in result.metadata)  # no private tags
    assert result.quarantine_reason is None


def test_pseudonyms_are_stable_keyed_and_keep_intervals():
    from cxrlake.deid import deidentify

    ct = dicom_json(find("CT_small.dcm"))
    first = deidentify(ct, TEST_KEY).metadata
    again = deidentify(ct, TEST_KEY).metadata
    other_key = deidentify(ct, b"another key, also 16+ bytes long").metadata
    uid = "0020000D"  # StudyInstanceUID
    assert first[uid] == again[uid] and first[uid] != other_key[uid]
    assert first[uid]["Value"][0].startswith("2.25.") and len(first[uid]["Value"][0]) <= 64
    assert first["00100020"] == again["00100020"] != other_key["00100020"]
    # A second study of the same patient, 30 days later: the interval survives the shift.
    later = json_with_date(ct, shift(ct["00080020"]["Value"][0], -30))
    shifted_a = first["00080020"]["Value"][0]
    shifted_b = deidentify(later, TEST_KEY).metadata["00080020"]["Value"][0]
    assert days_between(shifted_a, shifted_b) == days_between(
        ct["00080020"]["Value"][0], later["00080020"]["Value"][0]
    )


def shift(date: str, days: int) -> str:
    import datetime as dt

    return (dt.datetime.strptime(date, "%Y%m%d") - dt.timedelta(days=days)).strftime("%Y%m%d")


def days_between(a: str, b: str) -> int:
    import datetime as dt

    return (dt.datetime.strptime(b, "%Y%m%d") - dt.datetime.strptime(a, "%Y%m%d")).days


def json_with_date(obj: dict, study_date: str) -> dict:
    import copy

    out = copy.deepcopy(obj)
    out["00080020"] = {"vr": "DA", "Value": [study_date]}
    return out


def test_burned_in_annotation_is_quarantined():
    from cxrlake.deid import deidentify

    ct = dicom_json(find("CT_small.dcm"))
    ct["00280301"] = {"vr": "CS", "Value": ["YES"]}
    result = deidentify(ct, TEST_KEY)
    assert result.quarantine_reason == (
        "BurnedInAnnotation is YES: the pixels may show identifying text"
    )


def test_key_comes_from_the_environment_or_a_secret_never_a_default():
    from cxrlake.deid import load_key
    from cxrlake.exceptions import InvalidArgumentError

    assert load_key({"CXRLAKE_DEID_KEY": "k" * 32}) == b"k" * 32
    assert load_key({}, secret=lambda scope, name: "s" * 20) == b"s" * 20
    with pytest.raises(InvalidArgumentError, match="no de-identification key"):
        load_key({})
    with pytest.raises(InvalidArgumentError, match="shorter than 16 bytes") as info:
        load_key({"CXRLAKE_DEID_KEY": "short-key"})
    assert "short-key" not in str(info.value)


def test_a_secret_stored_from_standard_input_gives_the_same_key_as_the_shell_variable():
    """`openssl rand -base64 32 | databricks secrets put-secret <scope> deid-key` stores the
    trailing newline; `export CXRLAKE_DEID_KEY=$(openssl rand -base64 32)` has none. One key, one
    set of pseudonyms on both engines."""
    from cxrlake.deid import load_key

    key = "q0nB1tXk7yJ0m2l8b0V3cH5pZ9wE4rT6uI8oP1aS2dF="
    from_shell = load_key({"CXRLAKE_DEID_KEY": key})
    assert load_key({}, secret=lambda scope, name: key + "\n") == from_shell
    assert load_key({}, secret=lambda scope, name: key + "\r\n") == from_shell
    assert load_key({"CXRLAKE_DEID_KEY": key + "\n"}) == from_shell


# Attributes pydicom/deid's default recipe removes that cxrlake keeps, each for a stated reason.
KEPT_ON_PURPOSE = {
    # Identify the kind of object, not the patient (standard UIDs, PS3.15 Table E.1-1: K).
    "SOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "ReferencedSOPClassUID",
    # Times of day without their (shifted) dates: kept by the Modified Dates option.
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "InstanceCreationTime",
    "InstanceCreationDate",
    "EffectiveDateTime",
    # Acquisition parameters in milliseconds that deid's "endswith:Time" rule catches.
    "EchoTime",
    "ExposureTime",
    "RepetitionTime",
}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm"])
def test_cross_check_against_pydicom_deid(name):
    """Every attribute the `deid` package (pydicom/deid, default recipe) removes is removed or
    replaced by cxrlake too, unless listed in KEPT_ON_PURPOSE."""
    import logging

    from cxrlake.deid import deidentify

    logging.getLogger("deid").setLevel(logging.ERROR)
    path = find(name)
    with warnings.catch_warnings():
        # deid imports pydicom modules that pydicom 3 deprecates.
        warnings.simplefilter("ignore")
        from deid.dicom import replace_identifiers

        (theirs,) = replace_identifiers([str(path)], save=False, remove_private=True)
    original = pydicom.dcmread(path, stop_before_pixels=True)
    ours = deidentify(dicom_json(path), TEST_KEY).metadata
    they_removed = {
        element.keyword
        for element in original
        if element.keyword and element.keyword not in theirs and element.value not in (None, "")
    }
    assert they_removed, "the cross-check needs attributes that deid removes"
    for keyword in sorted(they_removed - KEPT_ON_PURPOSE):
        tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
        element = original[keyword]
        if tag in ours and element.VR != "SQ":
            kept = ours[tag].get("Value")
            original_value = element.to_json_dict(None, 0).get("Value")
            assert kept != original_value, f"{name}: {keyword} kept as is"


def test_jpeg2000_decodes_at_a_reduced_resolution_for_the_model_input(tiny_model_path):
    # For a small model input the JPEG 2000 film is decoded at 1/8 resolution (like the JPEG DCT
    # scaling); the tensor stays within 1.5 gray levels (mean) of the full decode + resize.
    model = cxrlake.Model(tiny_model_path)
    files = [str(find("RG1_J2KR.dcm")), str(find("RG1_UNCR.dcm"))]
    tensors, errors = cxrlake.preprocess(files, model=tiny_model_path, threads=2)
    assert errors.null_count == 2
    std = np.asarray(model.std, dtype=np.float32).reshape(-1, 1, 1)
    levels = np.abs(tensors[0] - tensors[1]) * std * 255.0
    assert levels.mean() <= 1.5, levels.mean()
