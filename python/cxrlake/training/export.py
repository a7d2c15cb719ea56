"""ONNX export following the model contract of docs/architecture.md, and int8 quantisation.

The file has input ``input`` float32 ``[N, 3, H, W]`` (N dynamic), outputs ``probability`` ``[N]``
and ``embedding`` ``[N, 1280]``, and carries its preprocessing, threshold, name and version as
``cxrlake.*`` metadata so the Rust core never hard-codes them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cxrlake.training.data import LABELS, load_grayscale, normalise
from cxrlake.training.model import LITE_MEAN, LITE_STD, ExportWrapper, PneumoniaNet

OPSET = 17


def contract_metadata(
    *,
    name: str,
    version: str,
    threshold: float,
    size: int,
    mean: float = LITE_MEAN,
    std: float = LITE_STD,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``cxrlake.*`` metadata_props of the contract, all values as strings."""
    meta = {
        "cxrlake.model_name": name,
        "cxrlake.model_version": version,
        "cxrlake.threshold": f"{threshold:.6f}",
        "cxrlake.input_height": str(size),
        "cxrlake.input_width": str(size),
        "cxrlake.input_channels": "3",
        "cxrlake.mean": f"{mean:.6f}",
        "cxrlake.std": f"{std:.6f}",
        "cxrlake.resize": "bilinear",
        "cxrlake.labels": ",".join(LABELS),
    }
    meta.update(extra or {})
    return meta


def set_metadata(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Replace the ``cxrlake.*`` (and other given) metadata_props of an ONNX file in place."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """All metadata_props of an ONNX file as a dict."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_onnx(
    net: PneumoniaNet, path: str | os.PathLike[str], metadata: Mapping[str, str]
) -> Path:
    """Write ``net`` (eval mode) as a single-file ONNX model with dynamic batch and ``metadata``."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(net).eval()
    dummy = torch.zeros(2, 3, net.size, net.size)
    tmp = path.with_suffix(".tmp.onnx")
    # The TorchScript exporter warns about its own internals (shape inference, deprecation of
    # the legacy path); the file is checked with onnx.checker and compared with torch instead.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(tmp),
            input_names=["input"],
            output_names=["probability", "embedding"],
            dynamic_axes={"input": {0: "N"}, "probability": {0: "N"}, "embedding": {0: "N"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    model.producer_name = "cxrlake.training"
    onnx.save(model, str(tmp))
    set_metadata(tmp, metadata)
    os.replace(tmp, path)
    return path


def onnx_session(path: str | os.PathLike[str], threads: int = 2):
    """An onnxruntime CPU session on ``path`` limited to ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(
    session, inputs: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``session`` on float32 ``[N, 3, H, W]``: (probability ``[N]``, embedding ``[N, D]``)."""
    probs, embeds = [], []
    for start in range(0, len(inputs), batch_size):
        p, e = session.run(
            ["probability", "embedding"], {"input": inputs[start : start + batch_size]}
        )
        probs.append(np.asarray(p, dtype=np.float32).reshape(-1))
        embeds.append(np.asarray(e, dtype=np.float32))
    return np.concatenate(probs), np.concatenate(embeds)


def torch_onnx_agreement(
    net: PneumoniaNet, path: str | os.PathLike[str], inputs: np.ndarray
) -> dict[str, float]:
    """Max abs differences between torch and onnxruntime on the same float32 tensors."""
    wrapper = ExportWrapper(net).eval()
    with torch.no_grad():
        p_t, e_t = wrapper(torch.from_numpy(inputs))
    p_o, e_o = onnx_predict(onnx_session(path), inputs)
    return {
        "max_abs_diff_probability": float(np.max(np.abs(p_t.numpy() - p_o))),
        "max_abs_diff_embedding": float(np.max(np.abs(e_t.numpy() - e_o))),
    }


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over contract-preprocessed images."""

    def __init__(self, paths: Sequence[str], size: int, mean: float, std: float) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {"input": normalise(load_grayscale(p, size)[None], mean, std)} for p in paths
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration_paths: Sequence[str],
    size: int,
    mean: float = LITE_MEAN,
    std: float = LITE_STD,
) -> Path:
    """Static int8 QDQ quantisation (per-channel weights) calibrated on ``calibration_paths``.

    The metadata of ``fp32_path`` is carried over; the caller re-sets the threshold.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_path = Path(int8_path)
    prepared = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(int8_path),
        _CalibrationReader(calibration_paths, size, mean, std),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)
    set_metadata(int8_path, read_metadata(fp32_path))
    return int8_path
