"""A study bundle (RSNA 2022 format) served: the exporter's extra output and head file, every
forward carrying the slice features, and ``InferenceCore.study`` building 2.5D inputs from the
ordered series and answering with the study head's patient_overall and C1..C7.

The bundle is ``testing.study_bundle``'s tiny one (random weights, exported by the product's
own exporter); the slice bundles' paths are covered by the tests of the committed bundles.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest

from ml_model.bundle import (
    CARD_FILE,
    ONNX_FILE,
    SAVED_MODEL_DIR,
    SERVING_FEATURES_OUTPUT,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    STUDY_HEAD_FILE,
)
from ml_model.card import STUDY_OUTPUTS, VERTEBRAE, CardError, ModelCard, load_card
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.imaging.transforms import neighbour_offset, resize, stack_neighbours
from ml_model.inference.batching import BatchedForward
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward import ForwardOutput, KerasForward
from ml_model.inference.forward_onnx import OnnxForward
from ml_model.inference.forward_tfserving import TFServingForward, decode_predictions
from ml_model.inference.study import SliceFile
from ml_model.inference.study_head import StudyHead
from ml_model.training.export import check_study_bundle, saved_model_outputs
from ml_model.training.export_onnx import synthetic_slices
from testing import study_bundle as tiny
from tests.conftest import gray_to_export_window_dicom, synthetic_slice

FEATURE_TOLERANCE = 1e-4
SERIES_UID = "1.2.826.0.1.3680043.2.1125.77"


@pytest.fixture(scope="module")
def bundle() -> Path:
    return tiny.study_bundle()


@pytest.fixture(scope="module")
def keras_core(bundle: Path) -> InferenceCore:
    return InferenceCore(bundle)


@pytest.fixture(scope="module")
def onnx_core(bundle: Path) -> InferenceCore:
    return InferenceCore(bundle, forward=OnnxForward.from_bundle(bundle, threads=1, lanes=1))


def series(count: int, spacing_mm: float) -> list[SliceFile]:
    """``count`` distinct slices head to foot (z = -spacing * i), named by index."""
    return [
        SliceFile(
            f"IM{i:03d}.dcm",
            gray_to_export_window_dicom(
                synthetic_slice(i % 2, seed=i, size=48),
                z=-spacing_mm * i,
                instance=i + 1,
                series_uid=SERIES_UID,
            ),
        )
        for i in range(count)
    ]


def expected_inputs(core: InferenceCore, files: list[SliceFile], offset: int) -> np.ndarray:
    """The 2.5D inputs of a series built the way training builds them: every slice decoded
    and resized, then ``stack_neighbours`` over the whole ordered volume."""
    volume = np.stack([resize(core.decode(f.data), core.bundle.img_size) for f in files])
    return stack_neighbours(volume, np.arange(len(files)), offset)


# ---- the bundle and the card ---------------------------------------------------------------


def test_export_writes_the_study_head_and_a_features_output(bundle: Path) -> None:
    import onnx

    card = load_card(bundle)
    assert card.input.context is not None and card.input.context.spacing_mm == tiny.CONTEXT_MM
    assert card.study.head is not None and card.study.head.feature_dim == tiny.FEATURE_DIM
    assert tuple(card.study.head.outputs) == STUDY_OUTPUTS
    head = StudyHead.load(bundle)
    assert (head.feature_dim, head.sequence_length) == (tiny.FEATURE_DIM, tiny.SEQUENCE_LENGTH)
    assert (bundle / STUDY_HEAD_FILE).is_file()
    outputs = {
        o.name for o in onnx.load(str(bundle / ONNX_FILE), load_external_data=False).graph.output
    }
    assert SERVING_FEATURES_OUTPUT in outputs
    # The export's parity covers the features and the head over them.
    parity = json.loads((bundle / CARD_FILE).read_text())["runtimes"]["onnx"]["parity"]
    assert parity["verdicts_identical"]
    row = parity["slices"]["synthetic"]
    assert row["max_abs_dfeatures"] <= FEATURE_TOLERANCE
    assert row["study_head_max_abs_dp"] <= FEATURE_TOLERANCE


def test_slice_bundles_stay_valid_without_the_study_sections() -> None:
    for name in ("default", "custom"):
        card = load_card(DEFAULT_MODEL_DIR.parent / name)
        assert card.input.context is None and card.study.head is None


def test_the_card_refuses_a_head_with_other_outputs() -> None:
    raw = tiny.study_card()
    raw["study"]["head"]["outputs"] = ["patient_overall", *VERTEBRAE[:-1]]
    with pytest.raises(ValueError, match="outputs must be"):
        ModelCard.model_validate(raw)


def test_the_exporter_wants_all_three_parts_of_a_study_bundle() -> None:
    model = tiny.slice_model()
    check_study_bundle(model, True, tiny.study_head_weights())  # all three: fine
    with pytest.raises(ValueError, match="study_head weights"):
        check_study_bundle(model, True, None)
    with pytest.raises(ValueError, match=r"the card's study\.head"):
        check_study_bundle(model, False, tiny.study_head_weights())


def test_a_head_that_disagrees_with_the_card_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    card["study"]["head"]["feature_dim"] = tiny.FEATURE_DIM + 1
    (copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CardError, match=r"study\.head\.feature_dim"):
        InferenceCore(copy, forward=OnnxForward.from_bundle(copy, threads=1, lanes=1))
    (copy / STUDY_HEAD_FILE).unlink()
    with pytest.raises(CardError, match="no study head"):
        InferenceCore(copy, forward=OnnxForward.from_bundle(copy, threads=1, lanes=1))


# ---- every forward carries the features ----------------------------------------------------


def test_every_forward_returns_the_same_slice_features(
    bundle: Path, keras_core: InferenceCore
) -> None:
    images = synthetic_slices(tiny.IMG_SIZE, count=7)
    reference = keras_core.forward(images)
    assert isinstance(keras_core.forward, KerasForward)
    assert reference.features is not None
    assert reference.features.shape == (7, tiny.FEATURE_DIM)
    assert reference.features.dtype == np.float32
    saved = saved_model_outputs(bundle / SAVED_MODEL_DIR, images)[SERVING_FEATURES_OUTPUT]
    np.testing.assert_allclose(saved, reference.features, atol=FEATURE_TOLERANCE)
    for lanes in (1, 3):
        onnx_forward = OnnxForward.from_bundle(bundle, threads=2, lanes=lanes)
        assert onnx_forward.has_features
        got = onnx_forward(images)
        assert got.features is not None
        np.testing.assert_allclose(got.features, reference.features, atol=FEATURE_TOLERANCE)
    batched = BatchedForward(OnnxForward.from_bundle(bundle, threads=1, lanes=1), max_size=4)
    try:
        futures = [batched.batcher.submit(images[i : i + 2]) for i in range(0, 7, 2)]
        rows = ForwardOutput.concat([f.result() for f in futures])
    finally:
        batched.close()
    assert rows.features is not None
    np.testing.assert_allclose(rows.features, reference.features, atol=FEATURE_TOLERANCE)


def test_tfserving_answers_carry_the_features(bundle: Path, keras_core: InferenceCore) -> None:
    """TF Serving returns every output of the signature; row and columnar answers alike."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(bundle / SAVED_MODEL_DIR))
    signature = loaded.signatures[SERVING_SIGNATURE]

    def answer(request: httpx.Request) -> httpx.Response:
        images = np.asarray(json.loads(request.content)["instances"], np.uint8)
        outputs = signature(**{SERVING_INPUT: tf.constant(images)})
        rows = [
            {name: value.numpy()[i].tolist() for name, value in outputs.items()}
            for i in range(len(images))
        ]
        return httpx.Response(200, json={"predictions": rows})

    forward = TFServingForward(
        "http://tfs/v1/models/m:predict", client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    images = synthetic_slices(tiny.IMG_SIZE, count=3)
    got = forward(images)
    reference = keras_core.forward(images)
    assert got.features is not None and reference.features is not None
    np.testing.assert_allclose(got.features, reference.features, atol=FEATURE_TOLERANCE)
    columnar = decode_predictions(
        {
            "outputs": {
                "probability": [[0.1], [0.2]],
                "ct_logit": [[1.0], [2.0]],
                SERVING_FEATURES_OUTPUT: [[0.0] * 3, [1.0] * 3],
            }
        },
        2,
    )
    assert columnar.features is not None and columnar.features.shape == (2, 3)
    plain = decode_predictions({"outputs": {"probability": [0.1], "ct_logit": [1.0]}}, 1)
    assert plain.features is None
    with pytest.raises(ValueError, match=r"unusable .slice_features. output"):
        decode_predictions(
            {"outputs": {"probability": [0.1], "ct_logit": [1.0], SERVING_FEATURES_OUTPUT: []}}, 1
        )


# ---- InferenceCore.study on a study bundle ---------------------------------------------------


@pytest.mark.parametrize("spacing_mm", [1.0, 2.0, 0.7])
def test_study_stacks_neighbours_at_the_cards_spacing_and_runs_the_head(
    onnx_core: InferenceCore, spacing_mm: float
) -> None:
    files = series(11, spacing_mm)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)  # upload order is not slice order
    verdict = onnx_core.study(shuffled)
    offset = neighbour_offset(spacing_mm, tiny.CONTEXT_MM)
    assert verdict.context_offset == offset
    assert verdict.names == [f.name for f in files]
    reference = onnx_core.forward(expected_inputs(onnx_core, files, offset))
    np.testing.assert_allclose(verdict.probabilities, reference.probability, atol=1e-6)
    assert onnx_core.study_head is not None and reference.features is not None
    expected = onnx_core.study_head(reference.features)
    assert verdict.probability == pytest.approx(float(expected[0]), abs=1e-6)
    assert verdict.vertebrae is not None and list(verdict.vertebrae) == list(VERTEBRAE)
    np.testing.assert_allclose(list(verdict.vertebrae.values()), expected[1:], atol=1e-6)
    assert verdict.threshold == onnx_core.bundle.card.study_threshold("sensitive")
    assert verdict.aggregation == "study_head"
    # The model input the route explains a top slice with is the one it was scored with.
    inputs = expected_inputs(onnx_core, files, offset)
    for index in (0, 5, 10):
        np.testing.assert_array_equal(onnx_core.study_model_input(verdict, index), inputs[index])


def test_a_top_k_study_score_keeps_the_heads_c1_to_c7(
    bundle: Path, onnx_core: InferenceCore, tmp_path: Path
) -> None:
    """A card whose training chose ``top2_mean`` (out of fold) over the head's patient_overall:
    the study score is the mean of the two highest slice probabilities, judged at the card's
    study threshold, and C1..C7 still come from the head."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    card["study"] |= {"aggregation": "top2_mean", "top_k": 2}
    (copy / CARD_FILE).write_text(json.dumps(card))
    core = InferenceCore(copy, forward=OnnxForward.from_bundle(copy, threads=1, lanes=1))
    files = series(9, 2.0)
    verdict, reference = core.study(files), onnx_core.study(files)
    assert verdict.aggregation == "top2_mean" and len(verdict.top_indices) == 2
    top_two = np.sort(verdict.probabilities)[-2:]
    assert verdict.probability == pytest.approx(float(top_two.mean()), abs=1e-6)
    assert verdict.probability != pytest.approx(reference.probability, abs=1e-6)
    assert verdict.threshold == core.bundle.card.study_threshold("sensitive")
    assert verdict.vertebrae == reference.vertebrae and verdict.vertebrae is not None


def test_study_in_batches_equals_study_in_one(
    onnx_core: InferenceCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming (batches, neighbours held only while needed) changes nothing."""
    import ml_model.inference.core as core_module

    files = series(9, 1.0)
    whole = onnx_core.study(files)
    monkeypatch.setattr(core_module, "SCORE_BATCH", 2)
    streamed = onnx_core.study(files)
    # Equal up to float32 rounding (batch size changes the kernels' summation order).
    np.testing.assert_allclose(streamed.probabilities, whole.probabilities, atol=1e-6)
    assert streamed.vertebrae is not None and whole.vertebrae is not None
    assert streamed.vertebrae == pytest.approx(whole.vertebrae, abs=1e-6)


def test_undecodable_slices_are_left_out_of_the_neighbours(onnx_core: InferenceCore) -> None:
    files = series(6, 2.0)
    no_pixels = gray_to_export_window_dicom(
        synthetic_slice(0, seed=9, size=48), z=-5.0, series_uid=SERIES_UID, with_pixels=False
    )
    broken = [*files[:3], SliceFile("broken.dcm", no_pixels), *files[3:]]
    verdict = onnx_core.study(broken)
    assert [name for name, _ in verdict.errors] == ["broken.dcm"]
    assert verdict.names == [f.name for f in files]
    reference = onnx_core.forward(expected_inputs(onnx_core, files, 1))
    np.testing.assert_allclose(verdict.probabilities, reference.probability, atol=1e-6)


def test_one_slice_study_and_single_slices_on_a_2_5d_bundle(onnx_core: InferenceCore) -> None:
    """One slice has no neighbours: its input is the slice in all three channels."""
    (only,) = series(1, 1.0)
    verdict = onnx_core.study([only])
    gray = onnx_core.decode(only.data)
    single = onnx_core.model_input(gray)
    assert np.array_equal(single[..., 0], single[..., 2])
    assert verdict.probabilities[0] == pytest.approx(onnx_core.classify(single)[0].probability)
    assert verdict.vertebrae is not None


def test_keras_and_onnx_studies_agree(keras_core: InferenceCore, onnx_core: InferenceCore) -> None:
    files = series(7, 1.5)
    keras_verdict, onnx_verdict = keras_core.study(files), onnx_core.study(files)
    assert keras_verdict.vertebrae is not None and onnx_verdict.vertebrae is not None
    for name in VERTEBRAE:
        assert keras_verdict.vertebrae[name] == pytest.approx(
            onnx_verdict.vertebrae[name], abs=1e-4
        )
    assert keras_verdict.result == onnx_verdict.result


def test_png_series_without_spacing_takes_the_next_slices(onnx_core: InferenceCore) -> None:
    import io

    from PIL import Image

    def png(i: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(synthetic_slice(i % 2, seed=i, size=48)).save(buffer, "PNG")
        return buffer.getvalue()

    files = [SliceFile(f"neck ({i + 1}).png", png(i)) for i in range(5)]
    verdict = onnx_core.study(files)
    assert verdict.context_offset == 1
    assert any("no slice spacing in mm" in w for w in verdict.warnings)
    reference = onnx_core.forward(expected_inputs(onnx_core, files, 1))
    np.testing.assert_allclose(verdict.probabilities, reference.probability, atol=1e-6)


def test_no_slice_in_distribution_makes_no_call(bundle: Path) -> None:
    """The CT gate refusing every slice: `Not a CT slice`, score 0 and no C1..C7."""
    from ml_model.config import RESULT_OUT_OF_DISTRIBUTION

    onnx_forward = OnnxForward.from_bundle(bundle, threads=1, lanes=1)

    class Refusing:
        has_features = True

        def __call__(self, images: np.ndarray) -> ForwardOutput:
            out = onnx_forward(images)
            return ForwardOutput(out.probability, np.full(len(out), -1e4), out.features)

        def is_ready(self) -> bool:
            return True

        def close(self) -> None:
            return None

    verdict = InferenceCore(bundle, forward=Refusing()).study(series(4, 1.0))
    assert verdict.result == RESULT_OUT_OF_DISTRIBUTION
    assert verdict.probability == 0.0 and verdict.vertebrae is None


def test_a_served_graph_without_features_is_a_bad_gateway(bundle: Path) -> None:
    """TF Serving serving another (slice) model than MODEL_DIR's study bundle: a 502."""
    from ml_model.inference.forward import ModelUnavailableError

    onnx_forward = OnnxForward.from_bundle(bundle, threads=1, lanes=1)

    class SliceGraph:
        def __call__(self, images: np.ndarray) -> ForwardOutput:
            out = onnx_forward(images)
            return ForwardOutput(out.probability, out.ct_logit)

        def is_ready(self) -> bool:
            return True

        def close(self) -> None:
            return None

    with pytest.raises(ModelUnavailableError, match="no slice features") as raised:
        InferenceCore(bundle, forward=SliceGraph()).study(series(3, 1.0))
    assert raised.value.status_code == 502
