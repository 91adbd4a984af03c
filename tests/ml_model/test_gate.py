"""The CT gate: its features, its file, and what the committed bundles accept and refuse."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.data import get_testdata_file

from ml_model.config import DEFAULT_MODEL_DIR, EXPORT_WINDOW, PACKAGE_DIR
from ml_model.data.dataset import find_images, load_arrays
from ml_model.data.negatives import KINDS, generate
from ml_model.evaluation.evaluate import bright_ellipse
from ml_model.imaging.errors import UnsupportedImageError
from ml_model.imaging.transforms import decode_image, gray_to_model_input
from ml_model.inference.core import InferenceCore
from ml_model.inference.gate import (
    FEATURE_NAMES,
    CTGate,
    GateFileError,
    ct_gate_margin,
    gate_features,
    gate_features_tf,
)

BUNDLES = [DEFAULT_MODEL_DIR, PACKAGE_DIR / "models" / "custom"]


def _backbone(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny random backbone of the gate's shape (two blocks, both taps): 8 + 12 features."""
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    return {
        "stem_w": arr(3, 3, 1, 8), "stem_b": arr(8),
        "block0_dw_w": arr(3, 3, 8, 1), "block0_dw_b": arr(8),
        "block0_project_w": arr(1, 1, 8, 8), "block0_project_b": arr(8),
        "block1_expand_w": arr(1, 1, 8, 16), "block1_expand_b": arr(16),
        "block1_dw_w": arr(5, 5, 16, 1), "block1_dw_b": arr(16),
        "block1_project_w": arr(1, 1, 16, 12), "block1_project_b": arr(12),
        "spec": np.array([[3, 1, 1, 1], [5, 2, 0, 1]], np.int32),
    }  # fmt: skip


def _gate(threshold: float = 0.5) -> CTGate:
    rng = np.random.default_rng(0)
    n = 8 + 12 + len(FEATURE_NAMES)
    return CTGate(
        rng.normal(size=n), rng.uniform(0.5, 2, n), rng.normal(size=n), 0.3, threshold, _backbone()
    )


def test_features_are_fractions_and_a_thumbnail() -> None:
    images = np.zeros((2, 64, 64, 3), np.uint8)
    images[1] = 255
    features = gate_features(images)
    assert features.shape == (2, len(FEATURE_NAMES))
    black, saturated = FEATURE_NAMES.index("black"), FEATURE_NAMES.index("saturated")
    assert features[0, black] == 1.0 and features[0, saturated] == 0.0
    assert features[1, black] == 0.0 and features[1, saturated] == 1.0
    assert np.all((features >= 0) & (features <= 1))


def test_graph_logit_equals_numpy_logit() -> None:
    gate = _gate()
    images = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3)).astype(np.float32)
    features = gate.features(images)
    assert features.shape == (5, gate.feature_count) == (5, 8 + 12 + len(FEATURE_NAMES))
    graph = gate.logit_tf(tf.constant(images)).numpy()
    np.testing.assert_allclose(graph, gate.logits(features), rtol=1e-4, atol=1e-4)
    logits = gate.logits(features)
    assert np.all((ct_gate_margin(logits, gate.threshold) <= 1) == (logits >= 0.5))


def test_gate_backbone_is_the_imagenet_efficientnet_it_names() -> None:
    """Folded batch norm and the grey stem give the ImageNet network's own activations."""
    import keras

    from ml_model.architectures.efficientnet_lite import build_imagenet_classifier
    from ml_model.inference.gate import backbone_tf, gate_view_tf
    from ml_model.training.gate_fit import imagenet_backbone

    backbone = imagenet_backbone(blocks=3, taps=(2,))
    reference = build_imagenet_classifier("lite0", img_size=64)
    tap = keras.Model(reference.input, reference.get_layer("block2_add").output)
    gray = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 1)).astype(np.float32)
    expected = tap(np.repeat(gray, 3, axis=-1)).numpy().mean(axis=(1, 2))
    got = backbone_tf(gate_view_tf(tf.constant(gray)), backbone).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_gate_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    gate = _gate()
    gate.save(tmp_path)
    loaded = CTGate.load(tmp_path, gate.threshold)  # the threshold: the card's
    np.testing.assert_array_equal(loaded.coef, gate.coef)
    for name, value in gate.backbone.items():
        np.testing.assert_array_equal(loaded.backbone[name], value)
    assert loaded.threshold == gate.threshold
    with np.load(tmp_path / "gate.npz") as stored:
        assert "threshold" not in stored.files  # stored once, in the card
    with pytest.raises(GateFileError, match="no CT gate file"):
        CTGate.load(tmp_path / "elsewhere", gate.threshold)
    with pytest.raises(GateFileError, match="finite"):
        CTGate.load(tmp_path, float("nan"))
    # A gate of the old kind (on the network's embedding, no backbone): refit it.
    np.savez(
        tmp_path / "gate.npz", mean=gate.mean, scale=gate.scale, coef=gate.coef,
        intercept=np.array(0.0), threshold=np.array(0.0), details=np.array("{}"),
    )  # fmt: skip
    with pytest.raises(GateFileError, match="refit the gate"):
        CTGate.load(tmp_path, gate.threshold)
    (tmp_path / "gate.npz").write_bytes(b"not a zip")
    with pytest.raises(GateFileError, match="unreadable"):
        CTGate.load(tmp_path, gate.threshold)


def test_threshold_rule_and_negative_folds() -> None:
    from ml_model.data.negatives import Negative
    from ml_model.training.gate_fit import choose_threshold, negative_folds

    threshold, rule = choose_threshold(3.0, 1.0)
    assert threshold == 2.0 and rule.startswith("midpoint")
    threshold, rule = choose_threshold(1.0, 2.0)
    assert threshold == 0.5 and "overlap" in rule
    assert choose_threshold(None, None)[0] == 0.0
    gray = np.zeros((4, 4), np.uint8)
    negatives = [Negative("photo", f"p{i % 5}", gray, False) for i in range(10)] + [
        Negative("noise", f"noise#{i}", gray, False) for i in range(6)
    ]
    folds = negative_folds(negatives, 3)
    # A source never straddles folds; every fold holds some of every kind.
    for source in {n.source for n in negatives}:
        assert len({f for f, n in zip(folds, negatives, strict=True) if n.source == source}) == 1
    for kind in ("photo", "noise"):
        assert {f for f, n in zip(folds, negatives, strict=True) if n.kind == kind} == {0, 1, 2}


def test_tf_and_numpy_features_agree() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        gate_features(images), gate_features_tf(tf.constant(images, tf.float32)).numpy(), atol=1e-6
    )


@pytest.fixture(scope="module", params=BUNDLES, ids=lambda p: p.name)
def core(request: pytest.FixtureRequest) -> InferenceCore:
    return InferenceCore(request.param)


def test_every_held_out_negative_is_refused(core: InferenceCore) -> None:
    """The images the gate never saw in training (a held-out part of every kind) are all
    refused: by the gate, or, for the pixels of an MR / US / X-ray / NM DICOM file that the
    gate lets through, by that file's header before any model runs."""
    training = core.bundle.card.training or {}
    negatives = generate(training["gate_negatives"], seed=training["seed"])
    held = [n for n in negatives if n.held_out]
    assert len(held) >= 200 and {n.kind for n in held} == set(KINDS)
    images = np.stack([gray_to_model_input(n.gray, core.bundle.img_size) for n in held])
    accepted = core.accepts(core.scores(images))
    let_through = []
    for negative, passed in zip(held, accepted, strict=True):
        if not passed:
            continue
        if negative.kind == "other_modality":
            with pytest.raises(UnsupportedImageError, match="not CT"):
                decode_image(Path(get_testdata_file(negative.source)).read_bytes(), *EXPORT_WINDOW)
            continue
        let_through.append(f"{negative.kind}:{negative.source}")
    assert not let_through


def test_bright_ellipse_is_never_a_fracture(core: InferenceCore) -> None:
    verdict = core.classify(bright_ellipse(core.bundle.img_size))[0]
    assert verdict.result != "Potentially Fracture", verdict


def _perturb(gray: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "jpeg50":
        buffer = io.BytesIO()
        Image.fromarray(gray).save(buffer, "JPEG", quality=50)
        return np.asarray(Image.open(buffer))
    if kind == "noise5":
        return np.clip(gray + rng.normal(0, 5, gray.shape), 0, 255).astype(np.uint8)
    if kind == "contrast1.1":
        return np.clip((gray.astype(np.float32) - 128) * 1.1 + 128, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(gray).resize((224, 224)).resize((512, 512)))


def test_real_ct_passes_the_gate_also_re_exported(core: InferenceCore, shared_data: Path) -> None:
    """The archive's val split (never trained on): no slice refused; under realistic
    re-export (JPEG 50, noise 5, contrast x1.1, 224 -> 512) at most 1 % refused."""
    records = find_images(shared_data / "val")
    images, _ = load_arrays(records, core.bundle.img_size, core.bundle.window, progress=False)
    assert core.accepts(core.scores(images)).all()
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(records), 200, replace=False)
    kinds = ("jpeg50", "noise5", "contrast1.1", "upsample")
    perturbed = np.stack(
        [
            gray_to_model_input(
                _perturb(
                    decode_image(records[i].path.read_bytes(), *EXPORT_WINDOW), kinds[k % 4], rng
                ),
                core.bundle.img_size,
            )
            for k, i in enumerate(chosen)
        ]
    )
    refused = int((~core.accepts(core.scores(perturbed))).sum())
    assert refused <= 2, f"{refused} of 200 re-exported CT slices refused"


def test_card_records_out_of_fold_gate_margins(core: InferenceCore) -> None:
    gate = core.bundle.card.gate.model_dump()
    assert gate["threshold"] == pytest.approx(core.bundle.gate_threshold)
    assert gate["lowest_out_of_fold_ct_logit"] >= gate["threshold"], json.dumps(gate)
    # Out of fold on both sides: no CT slice of a held-out series (re-exported copies
    # included) and no negative of a held-out source on the wrong side of the threshold.
    assert gate["highest_out_of_fold_negative_logit"] < gate["threshold"], json.dumps(gate)
    for name, row in gate["out_of_fold"].items():
        assert row["refused"] == row["refused_reexported"] == 0, name
    # The gate is the bundle's own, not the fracture network's.
    assert "nothing of the fracture network" in gate["features"]


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # a 128 x 128 phantom-like slice
        "explicit_VR-UN.dcm",  # BodyPartExamined PANCREAS
        "J2K_pixelrep_mismatch.dcm",  # BodyPartExamined HEAD
        "693_UNCI.dcm",
    ],
)
def test_ct_of_other_regions_is_refused(core: InferenceCore, name: str) -> None:
    """The gate knows neck CT as exported in the card's window, not CT in general, so other
    regions get no fracture call: "CT outside the model's range" (reason: region, these are
    DICOMs in the model's window) where the any-window gate knows them for CT, else "Not a
    CT slice" (issue 26)."""
    verdict = core.verdict(Path(get_testdata_file(name)).read_bytes())
    assert not verdict.in_distribution, verdict
    if verdict.result == "CT outside the model's range":
        assert verdict.outside_reason == "region", verdict
    else:
        assert verdict.result == "Not a CT slice" and verdict.outside_reason is None, verdict


def _fresh_negatives() -> list[tuple[str, np.ndarray]]:
    """Non-CT images the gate's design never looked at: sources that
    ``ml_model.data.negatives`` does not use (scikit-image's faces and other bundled images,
    matplotlib's sample images) and its synthetic kinds drawn with a seed never used there."""
    import matplotlib
    from skimage import data as skdata

    from ml_model.data.negatives import SYNTHETIC, _to_gray

    items = [(f"lfw_face#{i}", _to_gray(face)) for i, face in enumerate(skdata.lfw_subset())]
    for name in ("binary_blobs", "shepp_logan_phantom", "cat", "microaneurysms"):
        items.append((f"skimage.{name}", _to_gray(getattr(skdata, name)())))
    sample_data = Path(matplotlib.get_data_path(), "sample_data")
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        items.append((f"matplotlib.{name}", _to_gray(np.asarray(Image.open(sample_data / name)))))
    rng = np.random.default_rng(20261201)
    for kind, make in SYNTHETIC.items():
        items += [(f"{kind}#{i}", make(rng, 512)) for i in range(30)]
    return items


def test_fresh_negatives_are_refused(core: InferenceCore) -> None:
    """447 images (200 faces, 7 photos and drawings, 240 synthetic) outside the gate's
    training and held-out sets: all refused (measured once before this test was written:
    highest logit -2.70, threshold 2.10)."""
    items = _fresh_negatives()
    images = np.stack([gray_to_model_input(gray, core.bundle.img_size) for _, gray in items])
    accepted = core.accepts(core.scores(images))
    assert not accepted.any(), [name for (name, _), ok in zip(items, accepted, strict=True) if ok]
