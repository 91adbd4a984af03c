"""ONNX export of a bundle (``model.onnx``, ``gradcam.onnx``) and its parity with TensorFlow.

``model.onnx`` is tf2onnx's conversion of the traced ``forward.serving_function`` — the
function the SavedModel exports and ``KerasForward`` runs — so a change to that graph
(the CT gate's features, the crop) reaches ONNX Runtime on the next export by itself.
``gradcam.onnx`` converts ``gradcam.gradcam_function`` (one image at a time: the gradient's
shapes are then static) and keeps no weights of its own: its initializers are byte ranges
of ``model.onnx`` (ONNX external data), so a bundle carries the network once.

:func:`parity` runs TensorFlow (the reference) and ONNX Runtime over the same slices and
reports max |Δp|, max |Δct_logit| (a study bundle's: max |Δ slice_features| too) and
whether every verdict (both operating points, the CT gate) is the same; the export writes it
into the card as ``runtimes.onnx``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_model.bundle import (
    EXPORTED_FROM_KEY,
    GRADCAM_ONNX_FILE,
    GRADCAM_OUTPUT,
    ONNX_FILE,
    SERVING_FEATURES_OUTPUT,
    SERVING_GATE_OUTPUT,
    SERVING_INPUT,
    SERVING_OUTPUT,
    SHARED_WEIGHTS_KEY,
)
from ml_model.card import OPERATING_POINTS
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward import Forward, ForwardOutput, has_features
from ml_model.inference.forward_onnx import exported_from

if TYPE_CHECKING:
    import keras
    import onnx

    from ml_model.inference.gate import CTGate

OPSET = 17
# gradcam.onnx points into model.onnx for tensors at least this large (small ones stay inline).
SHARE_MIN_BYTES = 1024
# Slices whose network logit (before calibration) is below this in magnitude are reported
# apart: beyond it the network's float32 sigmoid is within a few float32 steps of 1, and the
# calibration's logit of it is that coarse (see ``parity``).
UNSATURATED_LOGIT = 10.0
PARITY_BATCH = 32


@functools.cache
def _register_tf2onnx_handlers() -> None:
    """Ops tf2onnx 1.17 does not convert: ``Log1p`` (the calibration's log(1 - p)) and the
    gradients Grad-CAM takes through a network's head: ``SigmoidGrad``, ``ReluGrad`` and
    ``MaxPoolGrad`` (each written as TensorFlow's CPU kernel computes it)."""
    from onnx import helper
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    def constant_one(ctx: Any, node: Any, like: str) -> str:
        dtype = utils.ONNX_TO_NUMPY_DTYPE[ctx.get_dtype(like)]
        return str(
            ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype)).output[0]
        )

    @tf_op("Log1p")
    class Log1p:
        @classmethod
        def version_1(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            x = node.input[0]
            shifted = ctx.make_node("Add", [x, constant_one(ctx, node, x)], op_name_scope=node.name)
            ctx.replace_inputs(node, [shifted.output[0]])
            node.type = "Log"

    @tf_op("SigmoidGrad")
    class SigmoidGrad:
        @classmethod
        def version_1(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            # TensorFlow's kernel: dy * y * (1 - y), in that order.
            y, dy = node.input[0], node.input[1]
            scaled = ctx.make_node("Mul", [dy, y], op_name_scope=node.name)
            rest = ctx.make_node("Sub", [constant_one(ctx, node, y), y], op_name_scope=node.name)
            ctx.replace_inputs(node, [scaled.output[0], rest.output[0]])
            node.type = "Mul"

    @tf_op("ReluGrad")
    class ReluGrad:
        @classmethod
        def version_1(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            # gradients where features > 0, else 0.
            gradients, features = node.input[0], node.input[1]
            dtype = utils.ONNX_TO_NUMPY_DTYPE[ctx.get_dtype(features)]
            zero = ctx.make_const(utils.make_name(f"{node.name}_zero"), np.array(0, dtype))
            positive = ctx.make_node("Greater", [features, zero.output[0]], op_name_scope=node.name)
            ctx.replace_inputs(node, [positive.output[0], gradients, zero.output[0]])
            node.type = "Where"

    @tf_op("MaxPoolGrad")
    class MaxPoolGrad:
        @classmethod
        def version_16(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            # Each window's gradient goes to the first maximum of the window (row-major),
            # summed where windows overlap: MaxPool's indices + ScatterElements(add).
            if node.get_attr_value("data_format", b"NHWC") not in (b"NHWC", "NHWC"):
                raise NotImplementedError("MaxPoolGrad: NHWC only")
            if node.get_attr_value("padding") not in (b"VALID", "VALID"):
                raise NotImplementedError("MaxPoolGrad: VALID padding only")
            ksize, strides = node.get_attr_value("ksize"), node.get_attr_value("strides")
            features, grad = node.input[0], node.input[2]
            scope = node.name
            shapes, dtypes = node.output_shapes, node.output_dtypes
            to_nchw = {"perm": [0, 3, 1, 2]}
            x = ctx.make_node("Transpose", [features], attr=to_nchw, op_name_scope=scope)
            pool = ctx.make_node(
                "MaxPool",
                [x.output[0]],
                attr={"kernel_shape": ksize[1:3], "strides": strides[1:3]},
                output_count=2,
                op_name_scope=scope,
            )
            g = ctx.make_node("Transpose", [grad], attr=to_nchw, op_name_scope=scope)
            flat = ctx.make_const(utils.make_name(f"{scope}_flat"), np.array([1, -1], np.int64))
            shape = ctx.make_node("Shape", [x.output[0]], op_name_scope=scope)
            zeros = ctx.make_node(
                "ConstantOfShape",
                [shape.output[0]],
                attr={"value": helper.make_tensor("value", ctx.get_dtype(features), [1], [0])},
                op_name_scope=scope,
            )
            flat_zeros = ctx.make_node("Reshape", [zeros.output[0], flat.output[0]])
            flat_index = ctx.make_node("Reshape", [pool.output[1], flat.output[0]])
            flat_grad = ctx.make_node("Reshape", [g.output[0], flat.output[0]])
            scattered = ctx.make_node(
                "ScatterElements",
                [flat_zeros.output[0], flat_index.output[0], flat_grad.output[0]],
                attr={"axis": 1, "reduction": "add"},
                op_name_scope=scope,
            )
            unflat = ctx.make_node("Reshape", [scattered.output[0], shape.output[0]])
            ctx.remove_node(node.name)
            ctx.make_node(
                "Transpose",
                [unflat.output[0]],
                attr={"perm": [0, 2, 3, 1]},
                outputs=[node.output[0]],
                shapes=shapes,
                dtypes=dtypes,
                op_name_scope=scope,
            )


def convert(fn: Any, batch: int | None, img_size: int) -> onnx.ModelProto:
    """tf2onnx's conversion of ``fn`` (uint8 ``image`` (batch, S, S, 3) -> dict of outputs)."""
    import tensorflow as tf
    import tf2onnx

    _register_tf2onnx_handlers()
    spec = tf.TensorSpec([batch, img_size, img_size, 3], tf.uint8, name=SERVING_INPUT)
    traced = tf.function(fn, input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(traced, input_signature=[spec], opset=OPSET)
    return proto


def share_weights(proto: onnx.ModelProto, weights_file: Path) -> int:
    """Point every large initializer of ``proto`` whose bytes occur in ``weights_file`` at
    them (ONNX external data, location relative to the model's folder); returns the bytes
    no longer stored twice. Identical bytes are the same tensor wherever they are found.
    A matrix found only transposed (a gradient's weights) becomes a Transpose of the shared
    bytes, which ONNX Runtime folds back into a constant when it loads the graph."""
    from onnx import helper, numpy_helper

    blob = weights_file.read_bytes()
    shared = 0
    kept = []
    for tensor in proto.graph.initializer:
        array = numpy_helper.to_array(tensor)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if array.nbytes < SHARE_MIN_BYTES:
            kept.append(tensor)
            continue
        offset = blob.find(array.tobytes())
        if offset >= 0:
            kept.append(_external(tensor, array, weights_file.name, offset))
            shared += array.nbytes
            continue
        offset = blob.find(np.ascontiguousarray(array.T).tobytes()) if array.ndim == 2 else -1
        if offset < 0:
            kept.append(tensor)
            continue
        source = numpy_helper.from_array(np.ascontiguousarray(array.T), f"{tensor.name}__shared")
        kept.append(_external(source, array.T, weights_file.name, offset))
        proto.graph.node.insert(
            0, helper.make_node("Transpose", [source.name], [tensor.name], perm=[1, 0])
        )
        shared += array.nbytes
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return shared


def stamp_shared_weights(proto: onnx.ModelProto, weights_file: Path) -> None:
    """Record in ``proto``'s metadata which file (and which content of it) its external
    data points into: ``forward_onnx.OnnxGradCam`` refuses a model.onnx written since."""
    import hashlib

    from onnx import helper

    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    props = {entry.key: entry.value for entry in proto.metadata_props}
    props[SHARED_WEIGHTS_KEY] = f"{weights_file.name} sha256:{digest}"
    helper.set_model_props(proto, props)


def _external(
    tensor: onnx.TensorProto, array: np.ndarray, location: str, offset: int
) -> onnx.TensorProto:
    import onnx

    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(name)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", array.nbytes)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


def export_onnx(
    model: keras.Model,
    out_dir: str | Path,
    temperature: float,
    gate: CTGate,
    gradcam_layer: str,
) -> dict[str, Any]:
    """Write ``model.onnx`` (dynamic batch) and ``gradcam.onnx`` (batch 1) into ``out_dir``;
    returns what the card records about them (files, sizes, versions)."""
    import onnx

    from ml_model.inference.forward import serving_function
    from ml_model.inference.gradcam import gradcam_function

    out = Path(out_dir)
    img_size = int(model.input_shape[1])
    serve, _ = serving_function(model, temperature, gate)
    proto = convert(serve, None, img_size)
    outputs = {output.name for output in proto.graph.output}
    expected = {SERVING_OUTPUT, SERVING_GATE_OUTPUT}
    if has_features(model):
        expected.add(SERVING_FEATURES_OUTPUT)
    if outputs != expected:
        raise RuntimeError(f"model.onnx: unexpected outputs {sorted(outputs)}")
    # Which model.keras / gate.npz / temperature it bakes in: OnnxForward.from_bundle
    # refuses it once the bundle changes under it (save those files first).
    onnx.helper.set_model_props(
        proto, {EXPORTED_FROM_KEY: json.dumps(exported_from(out, temperature), sort_keys=True)}
    )
    onnx.save(proto, out / ONNX_FILE)
    cam = convert(gradcam_function(model, gradcam_layer), 1, img_size)
    if GRADCAM_OUTPUT not in {output.name for output in cam.graph.output}:
        raise RuntimeError("gradcam.onnx: no gradcam output")
    shared = share_weights(cam, out / ONNX_FILE)
    stamp_shared_weights(cam, out / ONNX_FILE)
    onnx.save(cam, out / GRADCAM_ONNX_FILE)
    onnx.checker.check_model(str(out / GRADCAM_ONNX_FILE))
    return {
        "file": ONNX_FILE,
        "gradcam_file": GRADCAM_ONNX_FILE,
        "bytes": (out / ONNX_FILE).stat().st_size,
        "gradcam_bytes": (out / GRADCAM_ONNX_FILE).stat().st_size,
        "gradcam_bytes_shared_with_model": shared,
        "opset": OPSET,
        "converter": f"tf2onnx {_version('tf2onnx')}",
        "source": "ml_model.inference.forward.serving_function (traced), "
        "ml_model.inference.gradcam.gradcam_function (batch 1)",
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# ---- parity ----------------------------------------------------------------------------


def synthetic_slices(size: int, count: int = 12, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 inputs (count, size, size, 3) that exercise the whole graph:
    CT-like phantoms (a body at fat/muscle grey, a saturated bony ring near the middle),
    noise, flat and gradient images (which the CT gate refuses)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    images = []
    for index in range(count):
        kind = index % 4
        if kind in (0, 1):
            cy, cx = 0.5 + rng.uniform(-0.08, 0.08, 2)
            r = np.hypot(yy - cy, xx - cx)
            gray = np.where(r < rng.uniform(0.3, 0.42), 107.0, 0.0)
            gray = np.where(r < 0.25, 207.0, gray)
            ring = np.hypot(yy - cy - 0.05, xx - cx)
            gray = np.where((ring > 0.05) & (ring < 0.08), 255.0, gray)
            gray += rng.normal(0, 6 if kind == 0 else 15, gray.shape)
        elif kind == 2:
            gray = rng.uniform(0, 255, (size, size))
        else:
            gray = 255.0 * (yy * rng.uniform(0, 1) + xx * rng.uniform(0, 1)) / 2
        images.append(np.clip(gray, 0, 255).astype(np.uint8))
    return np.repeat(np.stack(images)[..., np.newaxis], 3, axis=-1)


def _outputs(forward: Forward, images: np.ndarray) -> ForwardOutput:
    return ForwardOutput.concat(
        [forward(images[i : i + PARITY_BATCH]) for i in range(0, len(images), PARITY_BATCH)]
    )


def compare_outputs(
    core: InferenceCore, reference: ForwardOutput, candidate: ForwardOutput
) -> dict[str, Any]:
    """max |Δp| (overall and where the network's output is not saturated), max |Δct_logit|,
    a study bundle's max |Δ slice_features| (absolute, and relative to the largest feature)
    and max |Δ| of its study head's 8 probabilities over the rows as one series, and the
    verdicts of both operating points (through the core's one verdict path) on the
    same rows."""
    dp = np.abs(candidate.probability - reference.probability)
    p = np.clip(reference.probability, 1e-12, 1 - 1e-12)
    network_logit = core.bundle.card.temperature * (np.log(p) - np.log1p(-p))
    unsaturated = np.abs(network_logit) < UNSATURATED_LOGIT
    differ: dict[str, int] = {}
    margin = math.inf
    for point in OPERATING_POINTS:
        ours = [v.result for v in core.judge(reference, point)]
        theirs = [v.result for v in core.judge(candidate, point)]
        differ[point] = sum(a != b for a, b in zip(ours, theirs, strict=True))
        margin = min(margin, float(np.min(np.abs(reference.probability - core.threshold(point)))))
    gate_margin = float(np.min(np.abs(reference.ct_logit - core.bundle.gate_threshold)))
    features: dict[str, Any] = {}
    if reference.features is not None and candidate.features is not None:
        dfeatures = float(np.max(np.abs(candidate.features - reference.features)))
        scale = float(np.max(np.abs(reference.features)))
        features = {
            "max_abs_dfeatures": dfeatures,
            "max_abs_dfeatures_over_max": dfeatures / scale if scale > 0 else dfeatures,
        }
        if core.study_head is not None:
            # The study head over these slices as one series: its 8 probabilities.
            head_reference = core.study_head(reference.features)
            head_candidate = core.study_head(candidate.features)
            features["study_head_max_abs_dp"] = float(
                np.max(np.abs(head_candidate - head_reference))
            )
    elif (reference.features is None) != (candidate.features is None):
        raise ValueError("one runtime returned slice features and the other did not")
    return {
        "n": len(reference),
        "max_abs_dp": float(dp.max()),
        "median_abs_dp": float(np.median(dp)),
        "max_abs_dp_unsaturated": float(dp[unsaturated].max()) if unsaturated.any() else None,
        "n_unsaturated": int(unsaturated.sum()),
        "max_abs_dct_logit": float(np.abs(candidate.ct_logit - reference.ct_logit).max()),
        "verdicts_differ": differ,
        "verdicts_identical": not any(differ.values()),
        "gate_refused": int(np.sum(~core.accepts(reference))),
        "closest_p_to_a_threshold": margin,
        "closest_ct_logit_to_gate_threshold": gate_margin,
        **features,
    }


def parity(
    model_dir: str | Path,
    reference: Forward,
    candidate: Forward,
    slices: Mapping[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """:func:`compare_outputs` of ``candidate`` against ``reference`` per named slice set.

    Why "unsaturated": the graph calibrates by taking the logit of the network's float32
    sigmoid output. Beyond a network logit of ~14 that output is within a few float32 steps
    of 1, so two runtimes whose sigmoids differ by one step give calibrated probabilities
    up to ~6e-3 apart there (p ~0.96 at temperature 5, ~0.88 at 8). Below a network logit
    of ``UNSATURATED_LOGIT`` they agree to ~1e-4.
    """
    core = InferenceCore(model_dir, forward=reference)
    return {
        name: compare_outputs(core, _outputs(reference, images), _outputs(candidate, images))
        for name, images in slices.items()
        if len(images)
    }


def gradcam_parity(
    model: keras.Model, layer_name: str, model_dir: str | Path, images: np.ndarray
) -> dict[str, Any]:
    """Grad-CAM from ``gradcam.onnx`` against TensorFlow's on ``images``: max |Δ| relative
    to each map's peak."""
    from ml_model.inference.forward_onnx import OnnxGradCam
    from ml_model.inference.gradcam import GradCam

    reference = GradCam(model, layer_name)
    candidate = OnnxGradCam.from_bundle(model_dir, reference.img_size)
    worst = 0.0
    for image in images:
        ref, got = reference(image), candidate(image)
        peak = float(np.max(np.abs(ref)))
        if peak > 0:
            worst = max(worst, float(np.max(np.abs(got - ref))) / peak)
        elif np.any(got):
            worst = math.inf
    return {"n": len(images), "max_abs_diff_over_peak": worst}


def onnx_card_section(
    model: keras.Model,
    model_dir: str | Path,
    temperature: float,
    gate: CTGate,
    gradcam_layer: str,
    slices: Mapping[str, np.ndarray],
    gradcam_images: int = 8,
) -> dict[str, Any]:
    """Export, then check: the card's ``runtimes.onnx`` section."""
    import tensorflow as tf

    from ml_model.inference.forward import KerasForward
    from ml_model.inference.forward_onnx import OnnxForward

    section = export_onnx(model, model_dir, temperature, gate, gradcam_layer)
    reference = KerasForward(model, temperature, gate)
    candidate = OnnxForward.from_bundle(model_dir)
    sets = parity(model_dir, reference, candidate, slices)
    first = next((images for images in slices.values() if len(images)), None)
    section["runtime"] = f"onnxruntime {_version('onnxruntime')} (CPU)"
    section["parity"] = {
        "reference": f"KerasForward (TensorFlow {tf.__version__}, in-process)",
        "verdicts_identical": all(s["verdicts_identical"] for s in sets.values()),
        "slices": sets,
        "note": "max_abs_dp includes saturated outputs (network logit > 10, where the "
        "network's float32 sigmoid is a few float32 steps from 1): one step there moves the "
        "calibrated p by up to ~6e-3; max_abs_dp_unsaturated excludes them",
    }
    if first is not None:
        section["parity"]["gradcam"] = gradcam_parity(
            model, gradcam_layer, model_dir, first[:gradcam_images]
        )
    return section
