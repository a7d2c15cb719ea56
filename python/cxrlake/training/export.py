"""ONNX export following the model contract of docs/architecture.md, and int8 quantisation.

The file has input ``input`` float32 ``[N, 3, H, W]`` (N dynamic), outputs ``probability`` ``[N]``,
``embedding`` ``[N, 1280]`` and ``heatmap`` ``[N, Hf, Wf]`` (class activation map, see
:func:`float_head_with_heatmap`), and carries its preprocessing, threshold, name and version as
``cxrlake.*`` metadata so the Rust core never hard-codes them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from cxrlake.training.data import LABELS, load_grayscale, normalise
from cxrlake.training.model import LITE_MEAN, LITE_STD, ExportWrapper, PneumoniaNet

OPSET = 17
HEATMAP_OUTPUT = "heatmap"
HEAD_BIAS_KEY = "cxrlake.head_bias"
TEMPERATURE_KEY = "cxrlake.temperature"
_HEAD = "cxrlake_head/"


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
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_onnx(
    net: PneumoniaNet, path: str | os.PathLike[str], metadata: Mapping[str, str]
) -> Path:
    """Write ``net`` (eval mode) as a single-file ONNX model with dynamic batch and ``metadata``.

    The file has the three outputs of the contract (``probability``, ``embedding``, ``heatmap``).
    """
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
    add_heatmap_output(tmp)
    set_metadata(tmp, metadata)
    os.replace(tmp, path)
    return path


def onnx_session(path: str | os.PathLike[str], threads: int = 2) -> ort.InferenceSession:
    """An onnxruntime CPU session on ``path`` limited to ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(
    session: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 64
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

    The backbone is int8; the head (pooling, linear, sigmoid) and the heatmap stay float32.

    The metadata of ``fp32_path`` is carried over; the caller re-sets the threshold.
    """
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
    # The quantiser puts Q/DQ pairs around the head too (a few dozen distinct probabilities):
    # rebuild the head and the heatmap in float, the backbone stays int8.
    add_heatmap_output(int8_path)
    carried = read_metadata(fp32_path)
    carried.pop(HEAD_BIAS_KEY, None)  # the int8 file's own (dequantised) bias stays
    set_metadata(int8_path, carried)
    return int8_path


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray:
    """Value of a constant tensor: an initializer, or a DequantizeLinear of initializers."""
    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "DequantizeLinear":
        q = numpy_helper.to_array(inits[producer.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[producer.input[1]]).astype(np.float64)
        zero = (
            numpy_helper.to_array(inits[producer.input[2]]).astype(np.float64)
            if len(producer.input) > 2 and producer.input[2]
            else np.zeros_like(scale)
        )
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((q - zero) * scale).astype(np.float32)
    if producer is not None and producer.op_type == "Constant":
        return numpy_helper.to_array(producer.attribute[0].t).astype(np.float32)
    raise ValueError(f"head tensor {name!r} is not a constant")


def _head_weights(graph: onnx.GraphProto) -> tuple[str, np.ndarray, float]:
    """(the feature map ``A``: the input of the single GlobalAveragePool, the head's weight
    ``w`` [1280], its bias ``b``) of the single Gemm head."""
    pools = [n for n in graph.node if n.op_type == "GlobalAveragePool"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    if len(pools) != 1 or len(gemms) != 1:
        raise ValueError(
            f"expected one GlobalAveragePool and one Gemm head, found {len(pools)} and {len(gemms)}"
        )
    features = pools[0].input[0]
    gemm = gemms[0]
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    weight = _constant_value(graph, gemm.input[1])
    weight = (weight if trans_b else weight.T).reshape(-1)
    bias = (
        float(_constant_value(graph, gemm.input[2]).reshape(-1)[0]) if len(gemm.input) > 2 else 0.0
    )
    return features, weight, bias


def _drop_head(graph: onnx.GraphProto, features: str) -> set[str]:
    """Remove every node downstream of ``features`` (the head), whatever only fed it and the
    initializers no node uses any more; returns the head's tensor names."""
    head_tensors, head_nodes = {features}, []
    for node in graph.node:
        if any(t in head_tensors for t in node.input):
            head_nodes.append(node)
            head_tensors.update(node.output)
    kept = [n for n in graph.node if n not in head_nodes]
    # ...and whatever only fed the head (e.g. the DequantizeLinear of its int8 weights).
    while True:
        used = {t for n in kept for t in n.input} | {features}
        alive = [n for n in kept if any(o in used for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    del graph.node[:]
    graph.node.extend(kept)
    used = {t for n in graph.node for t in n.input}
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return head_tensors


def _add_float_head(graph: onnx.GraphProto, features: str, weight: np.ndarray, bias: float) -> None:
    """The float32 head on ``features``: ``embedding``, ``probability`` and ``heatmap``."""
    dim = weight.size
    prefix = _HEAD
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight.reshape(1, dim), prefix + "weight"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), prefix + "bias"),
            numpy_helper.from_array(weight.reshape(1, dim, 1, 1), prefix + "cam_weight"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), prefix + "axis1"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("GlobalAveragePool", [features], [prefix + "pooled"], prefix + "pool"),
            helper.make_node(
                "Flatten", [prefix + "pooled"], ["embedding"], prefix + "flatten", axis=1
            ),
            helper.make_node(
                "Gemm",
                ["embedding", prefix + "weight", prefix + "bias"],
                [prefix + "logit2d"],
                prefix + "gemm",
                transB=1,
            ),
            helper.make_node(
                "Squeeze",
                [prefix + "logit2d", prefix + "axis1"],
                [prefix + "logit"],
                prefix + "squeeze",
            ),
            helper.make_node("Sigmoid", [prefix + "logit"], ["probability"], prefix + "sigmoid"),
            helper.make_node(
                "Conv", [features, prefix + "cam_weight"], [prefix + "cam"], prefix + "cam_conv"
            ),
            helper.make_node(
                "Squeeze",
                [prefix + "cam", prefix + "axis1"],
                [HEATMAP_OUTPUT],
                prefix + "cam_squeeze",
            ),
        ]
    )


def float_head_with_heatmap(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rebuild the classifier head of ``model`` in float and add ``heatmap``.

    Works on the fp32 export and on the int8 QDQ file alike (idempotent): every node after the
    last feature map ``A`` (the input of the single GlobalAveragePool) is removed, including the
    Quantize/DequantizeLinear pairs that made the int8 probability take only a few dozen values,
    and rebuilt in float32 from the head's weights ``w`` [1280] and bias ``b``:

    - ``embedding`` = flatten(GlobalAveragePool(A)), float32 ``[N, 1280]``;
    - ``probability`` = sigmoid(Gemm(embedding, w) + b), float32 ``[N]``;
    - ``heatmap`` = 1x1 Conv of ``A`` with ``w`` and no bias, float32 ``[N, Hf, Wf]``, so that
      ``logit = b + mean(heatmap)`` (global average pooling is linear); ``b`` is written to the
      metadata ``cxrlake.head_bias``.

    The backbone (and so its int8 speed) is untouched. Returns a new ModelProto.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    features, weight, bias = _head_weights(graph)
    head_tensors = _drop_head(graph, features)
    _add_float_head(graph, features, weight, bias)
    grid = _feature_grid(model, features)
    float_t = onnx.TensorProto.FLOAT
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("probability", float_t, ["N"]),
            helper.make_tensor_value_info("embedding", float_t, ["N", weight.size]),
            helper.make_tensor_value_info(HEATMAP_OUTPUT, float_t, ["N", *grid]),
        ]
    )
    kept_info = [v for v in graph.value_info if v.name not in head_tensors]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    onnx.checker.check_model(model)
    entries = [p for p in model.metadata_props if p.key != HEAD_BIAS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    entry = model.metadata_props.add()
    entry.key, entry.value = HEAD_BIAS_KEY, repr(bias)
    return model


def _feature_grid(model: onnx.ModelProto, features: str) -> list[int | str]:
    """(Hf, Wf) of the feature map ``features`` from shape inference (symbolic when unknown)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        if value.name == features:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[2].HasField("dim_value") and dims[3].HasField("dim_value"):
                return [dims[2].dim_value, dims[3].dim_value]
    return ["Hf", "Wf"]


def add_heatmap_output(path: str | os.PathLike[str]) -> Path:
    """Apply :func:`float_head_with_heatmap` to the ONNX file at ``path`` in place (atomic)."""
    path = Path(path)
    model = float_head_with_heatmap(onnx.load(str(path)))
    tmp = path.with_suffix(".heatmap.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def apply_temperature(path: str | os.PathLike[str], temperature: float) -> Path:
    """Fold ``p = sigmoid(logit / temperature)`` into the float head of ``path`` (in place).

    The head weight, bias, heatmap weight and ``cxrlake.head_bias`` are divided by
    ``temperature`` (so ``logit = head_bias + mean(heatmap)`` still holds, on the calibrated
    logit); ``cxrlake.temperature`` records the product of every temperature applied.
    """
    path = Path(path)
    model = onnx.load(str(path))
    names = {f"{_HEAD}weight", f"{_HEAD}bias", f"{_HEAD}cam_weight"}
    found = set()
    for i, init in enumerate(model.graph.initializer):
        if init.name in names:
            scaled = numpy_helper.to_array(init) / np.float32(temperature)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(scaled, init.name))
            found.add(init.name)
    if found != names:
        raise ValueError(f"{path}: no float head to calibrate (run add_heatmap_output first)")
    meta = {p.key: p.value for p in model.metadata_props}
    bias = float(meta[HEAD_BIAS_KEY]) / temperature
    total = float(meta.get(TEMPERATURE_KEY, "1.0")) * temperature
    tmp = path.with_suffix(".temperature.tmp")
    onnx.save(model, str(tmp))
    set_metadata(tmp, {HEAD_BIAS_KEY: repr(bias), TEMPERATURE_KEY: f"{total:.6f}"})
    os.replace(tmp, path)
    return path
