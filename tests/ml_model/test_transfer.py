"""keras.applications transfer models: build, train, preprocessing, weights, fine-tuning."""

from __future__ import annotations

import dataclasses
import socket
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest

from ml_model.architectures import transfer
from ml_model.architectures.layers import EMBEDDING_LAYER
from ml_model.architectures.registry import (
    ARCHITECTURES,
    DEFAULT_IMG_SIZES,
    GRADCAM_LAYERS,
    build_model,
    gradcam_layer,
)
from ml_model.architectures.weights import WeightsUnavailableError

# arch, smallest img_size keras.applications accepts (keeps CPU time low), preprocess_input
KERAS_ARCHS = [
    ("inceptionv3", 75, keras.applications.inception_v3.preprocess_input),
    ("resnet50v2", 32, keras.applications.resnet_v2.preprocess_input),
    ("xception", 71, keras.applications.xception.preprocess_input),
]
SIZES = {arch: size for arch, size, _ in KERAS_ARCHS}


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    """One random-init model per arch at its minimum size, shared by the tests below."""
    keras.utils.set_random_seed(0)
    return {arch: build_model(arch, size, weights="none") for arch, size, _ in KERAS_ARCHS}


@pytest.mark.parametrize(
    ("arch", "native", "gradcam"),
    [
        ("inceptionv3", 299, "mixed10"),
        ("resnet50v2", 224, "post_relu"),
        ("xception", 299, "block14_sepconv2_act"),
    ],
)
def test_registered(arch: str, native: int, gradcam: str) -> None:
    assert arch in ARCHITECTURES
    assert DEFAULT_IMG_SIZES[arch] == native
    assert GRADCAM_LAYERS[arch] == gradcam == gradcam_layer(arch)


@pytest.mark.parametrize(
    ("arch", "module", "url_attr"),
    [
        ("inceptionv3", "inception_v3", "WEIGHTS_PATH_NO_TOP"),
        ("resnet50v2", "resnet", None),
        ("xception", "xception", "WEIGHTS_PATH_NO_TOP"),
    ],
)
def test_weight_file_table_matches_installed_keras(
    arch: str, module: str, url_attr: str | None
) -> None:
    """Our copy of Keras' file names/URLs must stay what keras.applications downloads."""
    import importlib

    keras_module = importlib.import_module(f"keras.src.applications.{module}")
    spec = transfer.KERAS_BACKBONES[arch]
    if url_attr is None:  # resnet.py builds its URLs from a base path and a hash table
        assert spec.weights_url == keras_module.BASE_WEIGHTS_PATH + spec.weights_file
        assert spec.weights_hash == keras_module.WEIGHTS_HASHES[arch][1]
    else:
        assert spec.weights_url == getattr(keras_module, url_attr)
    assert spec.weights_url.endswith("/" + spec.weights_file)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "preprocess"), KERAS_ARCHS)
def test_builds_flat_and_trains_one_step(
    models: dict[str, keras.Model], arch: str, size: int, preprocess: object
) -> None:
    model = models[arch]
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 1)
    # Grad-CAM and the predictor's OOD stats read these from the top-level graph.
    names = {layer.name for layer in model.layers}
    assert {gradcam_layer(arch), EMBEDDING_LAYER, "fracture_probability"} <= names
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "backbone nested"
    # The in-model scaling is exactly the architecture's own preprocess_input.
    x = _images(2, size)
    scaled = model.get_layer(transfer.PREPROCESS_LAYER)(x)
    np.testing.assert_allclose(np.asarray(scaled), preprocess(x.copy()), atol=1e-6)

    # run_eagerly: one step without the 20-40 s tf.function trace of a big training graph.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", run_eagerly=True
    )
    head_before = model.get_layer("fracture_probability").get_weights()[0].copy()
    loss = model.train_on_batch(_images(4, size, seed=1), np.array([0, 1, 0, 1], "float32"))
    assert np.isfinite(loss)
    assert not np.allclose(model.get_layer("fracture_probability").get_weights()[0], head_before)
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (2, 1) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize(("arch", "too_small"), [("inceptionv3", 74), ("xception", 70)])
def test_below_minimum_size_is_rejected(arch: str, too_small: int) -> None:
    with pytest.raises(ValueError, match=f">= {too_small + 1}"):
        build_model(arch, too_small, weights="none")


@pytest.mark.parametrize(
    ("arch", "filename"),
    [
        ("inceptionv3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("resnet50v2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_missing_imagenet_weights_offline(
    arch: str, filename: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty Keras cache + no network -> one clear error naming the file and its place."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model(arch, SIZES[arch], weights="imagenet")
    message = str(caught.value)
    assert str(tmp_path / "models" / filename) in message
    assert "--weights PATH" in message
    assert caught.value.__suppress_context__  # no chained Keras/urllib traceback


@pytest.fixture(scope="module")
def notop_h5(models: dict[str, keras.Model], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet50V2 no-top file in the legacy .h5 layout keras.applications downloads."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model = models["resnet50v2"]
    backbone = keras.Model(model.input, model.get_layer("post_relu").output)
    path = tmp_path_factory.mktemp("notop") / "resnet50v2_notop.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)
    return path


def _same_backbone(a: keras.Model, b: keras.Model) -> None:
    x = _images(2, SIZES["resnet50v2"], seed=5)
    np.testing.assert_allclose(
        transfer.feature_extractor(a)(x), transfer.feature_extractor(b)(x), atol=1e-5
    )


@pytest.mark.slow
def test_imagenet_weights_from_the_keras_cache_offline(
    models: dict[str, keras.Model],
    notop_h5: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file already in $KERAS_HOME/models (right name, right md5) loads with no network."""
    spec = transfer.KERAS_BACKBONES["resnet50v2"]
    (tmp_path / "models").mkdir()
    cached = tmp_path / "models" / spec.weights_file
    cached.write_bytes(notop_h5.read_bytes())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # Our stand-in file has its own md5; everything else is the real lookup path.
    md5 = keras.src.utils.file_utils.hash_file(cached, algorithm="md5")
    monkeypatch.setitem(
        transfer.KERAS_BACKBONES, "resnet50v2", dataclasses.replace(spec, weights_hash=md5)
    )

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download although the file is cached")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    loaded = build_model("resnet50v2", SIZES["resnet50v2"], weights="imagenet")
    _same_backbone(loaded, models["resnet50v2"])


def test_weights_path_backbone_h5(models: dict[str, keras.Model], notop_h5: Path) -> None:
    loaded = build_model("resnet50v2", SIZES["resnet50v2"], weights=str(notop_h5))
    _same_backbone(loaded, models["resnet50v2"])


def test_weights_path_full_checkpoint_round_trip(
    models: dict[str, keras.Model], tmp_path: Path
) -> None:
    source = models["resnet50v2"]
    path = tmp_path / "resnet.weights.h5"
    source.save_weights(path)
    loaded = build_model("resnet50v2", SIZES["resnet50v2"], weights=str(path))
    x = _images(3, SIZES["resnet50v2"])
    np.testing.assert_allclose(loaded(x), source(x), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "exists", "error"),
    [("missing_notop.h5", False, FileNotFoundError), ("weights.bin", True, ValueError)],
)
def test_bad_weights_path(name: str, exists: bool, error: type[Exception], tmp_path: Path) -> None:
    path = tmp_path / name
    if exists:
        path.write_bytes(b"not weights")
    with pytest.raises(error):
        build_model("resnet50v2", 32, weights=str(path))


@pytest.mark.slow
def test_saved_model_round_trip_keeps_named_layers(
    models: dict[str, keras.Model], tmp_path: Path
) -> None:
    model = models["resnet50v2"]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert loaded.get_layer(gradcam_layer("resnet50v2")) is not None
    assert loaded.get_layer(EMBEDDING_LAYER) is not None
    x = _images(2, SIZES["resnet50v2"])
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("arch", list(SIZES))
def test_freeze_and_unfreeze_top_keep_batchnorm_frozen(
    models: dict[str, keras.Model], arch: str
) -> None:
    model = models[arch]
    transfer.freeze_backbone(model)
    trainable = [layer.name for layer in model.layers if layer.trainable and layer.weights]
    assert trainable == ["fracture_probability"]

    unfrozen = transfer.unfreeze_top(model, 30)
    assert unfrozen, "nothing unfrozen"
    layers_before_head = model.layers[: [ly.name for ly in model.layers].index(EMBEDDING_LAYER)]
    for layer in layers_before_head:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, f"{layer.name} was unfrozen"
    assert all(not layer.trainable for layer in layers_before_head[:-30])
    assert set(unfrozen) <= {layer.name for layer in layers_before_head[-30:]}
    assert model.get_layer("fracture_probability").trainable

    # A frozen BN runs in inference mode: a training-mode call leaves its statistics alone.
    bn = next(
        ly for ly in reversed(layers_before_head) if isinstance(ly, keras.layers.BatchNormalization)
    )
    mean_before = np.array(bn.moving_mean)
    model(_images(4, SIZES[arch], seed=2), training=True)
    np.testing.assert_array_equal(np.array(bn.moving_mean), mean_before)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["custom", "resnet50v2", "xception"])
def test_cached_features_give_the_full_model_predictions(
    models: dict[str, keras.Model], arch: str
) -> None:
    if arch == "custom":
        size, model = 64, build_model("custom", 64)
    else:
        size, model = SIZES[arch], models[arch]
    transfer.freeze_backbone(model)
    images = _images(10, size, seed=3)
    labels = np.array([0, 1] * 5, "float32")
    features = transfer.extract_features(model, images, batch_size=4)
    head = transfer.head_model(model)
    np.testing.assert_allclose(head(features), model(images), atol=1e-5)

    # Training the head on cached features trains the full model's head (shared layers).
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    before = model.get_layer("fracture_probability").get_weights()[0].copy()
    head.fit(features, labels, epochs=2, batch_size=5, verbose=0)
    after = model.get_layer("fracture_probability").get_weights()[0]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(head(features), model(images), atol=1e-5)


def test_features_from_dataset_keep_labels_aligned() -> None:
    import tensorflow as tf

    size = 32
    model = build_model("custom", size)
    images = _images(6, size, seed=4)
    labels = np.arange(6, dtype="float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(6, seed=1).batch(4)
    features, got_labels = transfer.extract_features_from_dataset(model, dataset)
    expected = transfer.extract_features(model, images)
    np.testing.assert_allclose(features, expected[got_labels.astype(int)], atol=1e-5)
