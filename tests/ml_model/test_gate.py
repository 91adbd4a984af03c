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

from ml_model.config import DEFAULT_MODEL_DIR, PACKAGE_DIR
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
    gate_features,
    gate_features_tf,
)

# The custom CNN's 32-number embedding makes a weak gate: 344 of 400 held-out non-CT images
# refused (photos 49/66, objects 19/30, shapes 23/30). A known, reported failure: strict, so
# the test says so the day it passes.
CUSTOM_GATE_GAP = pytest.mark.xfail(
    strict=True, reason="custom bundle's gate lets held-out photos, objects and shapes through"
)
BUNDLES = [DEFAULT_MODEL_DIR, PACKAGE_DIR / "models" / "custom"]


def _gate(n: int = len(FEATURE_NAMES), threshold: float = 0.5) -> CTGate:
    rng = np.random.default_rng(0)
    return CTGate(rng.normal(size=n), rng.uniform(0.5, 2, n), rng.normal(size=n), 0.3, threshold)


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
    features = np.random.default_rng(1).uniform(size=(5, len(FEATURE_NAMES)))
    graph = gate.logit_tf(tf.constant(features, tf.float32)).numpy()
    np.testing.assert_allclose(graph, gate.logits(features), rtol=1e-4, atol=1e-4)
    assert np.all((gate.distance(gate.logits(features)) <= 1) == (gate.logits(features) >= 0.5))


def test_gate_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    gate = _gate()
    gate.save(tmp_path)
    loaded = CTGate.load(tmp_path)
    np.testing.assert_array_equal(loaded.coef, gate.coef)
    assert loaded.threshold == gate.threshold
    with pytest.raises(GateFileError, match="no CT gate file"):
        CTGate.load(tmp_path / "elsewhere")
    _gate(threshold=float("nan")).save(tmp_path)
    with pytest.raises(GateFileError, match="finite"):
        CTGate.load(tmp_path)
    (tmp_path / "gate.npz").write_bytes(b"not a zip")
    with pytest.raises(GateFileError, match="unreadable"):
        CTGate.load(tmp_path)


def test_tf_and_numpy_features_agree() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        gate_features(images), gate_features_tf(tf.constant(images, tf.float32)).numpy(), atol=1e-6
    )


@pytest.fixture(scope="module", params=BUNDLES, ids=lambda p: p.name)
def bundle(request: pytest.FixtureRequest) -> InferenceCore:
    return InferenceCore(request.param)


def test_every_held_out_negative_is_refused(
    bundle: InferenceCore, request: pytest.FixtureRequest
) -> None:
    """The images the gate never saw in training (a held-out part of every kind) are all
    refused: by the gate, or, for the pixels of an MR / US / X-ray / NM DICOM file that the
    gate lets through, by that file's header before any model runs."""
    if bundle.model_dir.name == "custom":
        request.applymarker(CUSTOM_GATE_GAP)
    training = bundle.card.training or {}
    negatives = generate(training["gate_negatives"], seed=training["seed"])
    held = [n for n in negatives if n.held_out]
    assert len(held) >= 200 and {n.kind for n in held} == set(KINDS)
    images = np.stack([gray_to_model_input(n.gray, bundle.img_size) for n in held])
    accepted = bundle.accepts(bundle.scores(images))
    let_through = []
    for negative, passed in zip(held, accepted, strict=True):
        if not passed:
            continue
        if negative.kind == "other_modality":
            with pytest.raises(UnsupportedImageError, match="not CT"):
                decode_image(Path(get_testdata_file(negative.source)).read_bytes())
            continue
        let_through.append(f"{negative.kind}:{negative.source}")
    assert not let_through


def test_bright_ellipse_is_never_a_fracture(bundle: InferenceCore) -> None:
    verdict = bundle.classify(bright_ellipse(bundle.img_size))[0]
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


def test_real_ct_passes_the_gate_also_re_exported(bundle: InferenceCore, shared_data: Path) -> None:
    """The archive's val split (never trained on): no slice refused; under realistic
    re-export (JPEG 50, noise 5, contrast x1.1, 224 -> 512) at most 1 % refused."""
    records = find_images(shared_data / "val")
    images, _ = load_arrays(records, bundle.img_size, progress=False)
    assert bundle.accepts(bundle.scores(images)).all()
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(records), 200, replace=False)
    kinds = ("jpeg50", "noise5", "contrast1.1", "upsample")
    perturbed = np.stack(
        [
            gray_to_model_input(
                _perturb(decode_image(records[i].path.read_bytes()), kinds[k % 4], rng),
                bundle.img_size,
            )
            for k, i in enumerate(chosen)
        ]
    )
    refused = int((~bundle.accepts(bundle.scores(perturbed))).sum())
    assert refused <= 2, f"{refused} of 200 re-exported CT slices refused"


def test_card_records_out_of_fold_gate_margins(bundle: InferenceCore) -> None:
    gate = bundle.card.gate.model_dump()
    assert gate["threshold"] == pytest.approx(bundle.gate_threshold)
    assert gate["lowest_out_of_fold_ct_logit"] >= gate["threshold"], json.dumps(gate)
