"""The RSNA study models: the 2.5D slice model's outputs and feature vector, the Keras study
head, and its numpy twin the server runs (parity < 1e-5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_model.bundle import STUDY_HEAD_FILE
from ml_model.card import STUDY_OUTPUTS
from ml_model.inference.study_head import StudyHead, StudyHeadError, resample_sequence


@pytest.mark.parametrize(
    ("features", "length", "expected"),
    [
        ([[0.0], [2.0], [4.0]], 5, [0.0, 1.0, 2.0, 3.0, 4.0]),
        ([[0.0], [3.0]], 4, [0.0, 1.0, 2.0, 3.0]),
        ([[7.0]], 3, [7.0, 7.0, 7.0]),
        ([[0.0], [1.0], [2.0], [3.0], [4.0]], 3, [0.0, 2.0, 4.0]),
        ([[1.0], [5.0]], 1, [1.0]),
    ],
)
def test_resample_sequence_is_linear_along_the_slices(features, length, expected):
    out = resample_sequence(np.array(features), length)
    assert out.dtype == np.float32
    assert out.shape == (length, 1)
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-6)


def test_resample_sequence_refuses_an_empty_study():
    with pytest.raises(ValueError, match="Z >= 1"):
        resample_sequence(np.zeros((0, 4)), 8)


def _save(path: Path, arrays: dict[str, Any]) -> None:
    np.savez(path / STUDY_HEAD_FILE, **arrays)


def _random_head(feature_dim: int, length: int, seed: int = 0):
    import keras

    from ml_model.architectures.study_head import build_study_head

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_study_head(
        feature_dim,
        length,
        units=6,
        attention=5,
        mean=rng.normal(0, 1, feature_dim),
        scale=rng.uniform(0.5, 2.0, feature_dim),
    )
    # Non-zero biases everywhere (Keras initialises them to zero) so parity covers them.
    for layer in model.layers:
        if layer.name == "standardise":
            continue
        layer.set_weights([w + rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
    return model


def test_numpy_head_matches_keras():
    from ml_model.architectures.study_head import study_head_arrays

    feature_dim, length = 11, 16
    model = _random_head(feature_dim, length)
    head = StudyHead.from_arrays(study_head_arrays(model))
    assert head.sequence_length == length and head.feature_dim == feature_dim
    rng = np.random.default_rng(1)
    for slices in (1, 9, 16, 37):
        features = rng.normal(0, 2, (slices, feature_dim)).astype(np.float32)
        sequence = resample_sequence(features, length)[np.newaxis]
        keras_logits = np.asarray(model(sequence, training=False))[0]
        np.testing.assert_allclose(head.logits(features), keras_logits, atol=1e-5)
        keras_p = 1 / (1 + np.exp(-keras_logits.astype(np.float64)))
        assert np.max(np.abs(head(features) - keras_p)) < 1e-5
    named = head.named(features)
    assert list(named) == list(STUDY_OUTPUTS)


def test_study_head_load_round_trip_and_errors(tmp_path):
    from ml_model.architectures.study_head import study_head_arrays

    model = _random_head(9, 8, seed=2)
    arrays = study_head_arrays(model)
    with pytest.raises(StudyHeadError, match="no study head"):
        StudyHead.load(tmp_path)
    _save(tmp_path, arrays)
    head = StudyHead.load(tmp_path)
    features = np.random.default_rng(3).normal(size=(20, 9)).astype(np.float32)
    np.testing.assert_allclose(head(features), StudyHead.from_arrays(arrays)(features))
    with pytest.raises(ValueError, match=r"\(Z, 9\)"):
        head(features[:, :5])
    broken = dict(arrays, outputs=np.array(["a"] * 8))
    with pytest.raises(StudyHeadError, match="outputs"):
        StudyHead.from_arrays(broken)
    _save(tmp_path, {k: v for k, v in arrays.items() if k != "mean"})
    with pytest.raises(StudyHeadError, match=f"{STUDY_HEAD_FILE}.*lacks mean"):
        StudyHead.load(tmp_path)


@pytest.mark.parametrize("arch", ["custom", "compact"])
def test_slice_model_outputs_and_feature_vector(arch):
    import tensorflow as tf

    from ml_model.architectures.rsna_slice import (
        FEATURE_LOGIT_EPS,
        SLICE_OUTPUTS,
        build_slice_model,
        slice_feature_dim,
        slice_features_tf,
    )

    model = build_slice_model(arch, 64, embedding=5)
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3)).astype(np.float32)
    outputs = model(images, training=False)
    assert set(outputs) == set(SLICE_OUTPUTS)
    assert tuple(outputs["fracture"].shape) == (3, 1)
    assert tuple(outputs["vertebrae"].shape) == (3, 7)
    assert tuple(outputs["embedding"].shape) == (3, 5)
    features = slice_features_tf(outputs).numpy()
    assert features.shape == (3, slice_feature_dim(5)) == (3, 13)
    p = np.clip(outputs["fracture"].numpy()[:, 0], FEATURE_LOGIT_EPS, 1 - FEATURE_LOGIT_EPS)
    np.testing.assert_allclose(features[:, 0], np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features[:, 8:], outputs["embedding"].numpy(), atol=1e-6)
    saturated = slice_features_tf(
        {
            "fracture": tf.constant([[1.0]]),
            "vertebrae": tf.zeros((1, 7)),
            "embedding": tf.zeros((1, 5)),
        }
    ).numpy()
    assert np.all(np.isfinite(saturated)) and np.abs(saturated).max() < 10


def test_the_compact_cnn_sees_a_small_spot_wherever_it_lies():
    """Global max pooling: a bright 3x3 spot on black moved across the slice (by whole 8x8
    cells of the last map, so the move is exact; black is what the convolutions pad with;
    the spot's receptive field, about 37 pixels each way, stays inside the slice) gives the
    same max-pooled features; the seed's custom CNN, which flattens its map, does not."""
    import keras

    from ml_model.architectures.layers import EMBEDDING_LAYER
    from ml_model.architectures.registry import build_model, is_pretrained

    def pooled(arch: str) -> tuple[np.ndarray, np.ndarray]:
        model = build_model(arch, 128)
        embedding = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)
        images = np.zeros((2, 128, 128, 3), np.float32)
        images[0, 40:43, 40:43] = 255.0
        images[1, 80:83, 72:75] = 255.0
        out = embedding(images, training=False)
        return np.asarray(out[0]), np.asarray(out[1])

    a, b = pooled("compact")
    half = a.size // 2  # [max pool | average pool]
    np.testing.assert_allclose(a[:half], b[:half], rtol=1e-4, atol=1e-5)
    assert not is_pretrained("compact") and not is_pretrained("custom")
    c, d = pooled("custom")
    assert not np.allclose(c, d, atol=1e-5)


def test_slice_model_refuses_an_unknown_backbone():
    from ml_model.architectures.rsna_slice import build_slice_model

    with pytest.raises(ValueError, match="unknown architecture"):
        build_slice_model("vgg", 64)
