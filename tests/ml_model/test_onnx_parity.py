"""ONNX Runtime (the serving default) against TensorFlow (the reference) on the committed
bundles: the same verdicts, probabilities within float32 noise, the same Grad-CAM.

The full check (the whole val split and every training slice) is the bench's
(``python -m bench.parity``) and the export's (the card's ``runtimes.onnx``); here a sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_model.bundle import CARD_FILE, GRADCAM_ONNX_FILE, ONNX_FILE
from ml_model.config import EXPORT_WINDOW, PACKAGE_DIR
from ml_model.inference.forward import KerasForward, ModelUnavailableError
from ml_model.inference.forward_onnx import OnnxForward, OnnxGradCam, OnnxModelError
from ml_model.training.export_onnx import parity, synthetic_slices

BUNDLES = {name: PACKAGE_DIR / "models" / name for name in ("default", "custom")}
# Float32 noise, see export_onnx.parity: up to ~6e-3 where the network's sigmoid saturates
# (network logit > 10), ~1e-4 elsewhere.
MAX_DP = 1e-2
MAX_DP_UNSATURATED = 5e-4
MAX_DCT_LOGIT = 1e-2
SAMPLE = 12  # real slices per split


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def bundle(request: pytest.FixtureRequest) -> tuple[Path, KerasForward, OnnxForward]:
    model_dir = BUNDLES[request.param]
    return model_dir, KerasForward.from_bundle(model_dir), OnnxForward.from_bundle(model_dir)


def _assert_close(rows: dict[str, dict[str, object]]) -> None:
    for name, row in rows.items():
        assert row["verdicts_identical"], (name, row)
        assert row["max_abs_dp"] <= MAX_DP, (name, row)
        unsaturated = row["max_abs_dp_unsaturated"]
        assert unsaturated is None or unsaturated <= MAX_DP_UNSATURATED, (name, row)
        assert row["max_abs_dct_logit"] <= MAX_DCT_LOGIT, (name, row)


def _real_sample(shared_data: Path, size: int) -> dict[str, np.ndarray]:
    from ml_model.imaging.transforms import load_image

    sample = {}
    for split in ("val", "train"):
        files = sorted((shared_data / split).rglob("*.png"))
        picked = files[:: max(1, len(files) // SAMPLE)][:SAMPLE]
        sample[split] = np.stack([load_image(f, size, *EXPORT_WINDOW) for f in picked])
    return sample


def test_the_committed_bundles_carry_onnx_and_its_parity() -> None:
    for name, model_dir in BUNDLES.items():
        assert (model_dir / ONNX_FILE).is_file(), name
        assert (model_dir / GRADCAM_ONNX_FILE).is_file(), name
        # gradcam.onnx borrows model.onnx's weights: the network ships once.
        assert (model_dir / GRADCAM_ONNX_FILE).stat().st_size < 512 * 1024
        onnx = json.loads((model_dir / CARD_FILE).read_text())["runtimes"]["onnx"]
        assert onnx["file"] == ONNX_FILE
        assert onnx["parity"]["verdicts_identical"], name
        _assert_close(onnx["parity"]["slices"])


def test_onnx_agrees_with_tensorflow_on_synthetic_slices(bundle) -> None:
    model_dir, keras_forward, onnx_forward = bundle
    images = synthetic_slices(onnx_forward.img_size)
    _assert_close(parity(model_dir, keras_forward, onnx_forward, {"synthetic": images}))


def test_onnx_agrees_with_tensorflow_on_real_slices(bundle, shared_data: Path) -> None:
    model_dir, keras_forward, onnx_forward = bundle
    sample = _real_sample(shared_data, onnx_forward.img_size)
    _assert_close(parity(model_dir, keras_forward, onnx_forward, sample))


def test_onnx_gradcam_matches_tensorflow(bundle) -> None:
    from ml_model.inference.gradcam import GradCam

    model_dir, keras_forward, onnx_forward = bundle
    card = json.loads((model_dir / CARD_FILE).read_text())
    reference = GradCam(keras_forward.model, card["gradcam_layer"])
    candidate = OnnxGradCam.from_bundle(model_dir, onnx_forward.img_size)
    for image in synthetic_slices(onnx_forward.img_size)[:2]:
        expected, got = reference(image), candidate(image)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-3 * max(1e-6, float(expected.max())))


def test_chunks_do_not_change_the_answer(bundle) -> None:
    model_dir, _, onnx_forward = bundle
    images = synthetic_slices(onnx_forward.img_size, count=5)
    small = OnnxForward.from_bundle(model_dir)
    small.chunk = 2
    whole, chunked = onnx_forward(images), small(images)
    np.testing.assert_array_equal(chunked.probability, whole.probability)
    np.testing.assert_array_equal(chunked.ct_logit, whole.ct_logit)
    assert len(onnx_forward(images[:0])) == 0


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_lanes_give_the_one_sessions_answer(bundle, count: int) -> None:
    """A batch split over single-thread lanes (uneven shares included) returns each row's
    own answer, in order, as one multi-threaded session does (to float32 rounding)."""
    model_dir, _, _ = bundle
    images = synthetic_slices(OnnxForward.from_bundle(model_dir, lanes=1).img_size, count=5)
    one = OnnxForward.from_bundle(model_dir, threads=2, lanes=1)(images[:count])
    lanes = OnnxForward.from_bundle(model_dir, threads=2, lanes=3)
    assert len(lanes._lanes) == 3
    split = lanes(images[:count])
    np.testing.assert_allclose(split.probability, one.probability, rtol=0, atol=1e-6)
    np.testing.assert_allclose(split.ct_logit, one.ct_logit, rtol=0, atol=1e-5)
    lanes.close()
    with pytest.raises(ModelUnavailableError):
        lanes(images[:count])


def test_a_bundle_without_model_onnx_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match=r"model\.onnx.*ml_model\.training\.export --bundle"):
        OnnxForward.from_bundle(tmp_path)
    (tmp_path / ONNX_FILE).write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="unreadable ONNX model"):
        OnnxForward.from_bundle(tmp_path)


def test_gradcam_onnx_refuses_a_model_onnx_it_was_not_exported_with(tmp_path: Path) -> None:
    """gradcam.onnx reads its weights out of model.onnx: against another model.onnx it
    would compute nonsense, so it refuses to open (naming the fix)."""
    import shutil

    source = BUNDLES["custom"]
    for name in (ONNX_FILE, GRADCAM_ONNX_FILE):
        shutil.copy(source / name, tmp_path / name)
    image = synthetic_slices(OnnxForward(tmp_path / ONNX_FILE).img_size, count=1)[0]
    assert OnnxGradCam.from_bundle(tmp_path, image.shape[0])(image).shape == image.shape[:2]
    with (tmp_path / ONNX_FILE).open("ab") as model:
        model.write(b"\0")  # any change to the file, even one its graph would not notice
    with pytest.raises(OnnxModelError, match=r"has changed since; export both again"):
        OnnxGradCam.from_bundle(tmp_path, image.shape[0])(image)


def test_a_model_onnx_older_than_its_bundle_is_refused(tmp_path: Path) -> None:
    """model.onnx bakes in the network, the CT gate and the temperature: once the bundle's
    gate is refitted (or the model retrained, or recalibrated) it is refused, by name."""
    import shutil

    source = BUNDLES["custom"]
    for name in (ONNX_FILE, GRADCAM_ONNX_FILE, CARD_FILE, "gate.npz", "model.keras"):
        shutil.copy(source / name, tmp_path / name)
    OnnxForward.from_bundle(tmp_path)  # as exported: accepted
    with (tmp_path / "gate.npz").open("ab") as gate:
        gate.write(b"\0")
    with pytest.raises(OnnxModelError, match=r"exported from another gate\.npz"):
        OnnxForward.from_bundle(tmp_path)
    shutil.copy(source / "gate.npz", tmp_path / "gate.npz")
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["temperature"] *= 2
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(OnnxModelError, match="temperature"):
        OnnxForward.from_bundle(tmp_path)
