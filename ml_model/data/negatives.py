"""Images that are not CT slices, for training and testing the CT gate.

Every source installs from PyPI: scikit-image, scikit-learn and matplotlib sample
images, the MR / ultrasound / X-ray / nuclear-medicine files of ``pydicom-data``, and
synthetic images (noise, gradients, text, charts, documents, screenshots, shapes).
Each kind is split into a training part and a held-out part that the gate never sees
(for photos and DICOM files by source file, for synthetic kinds by seed), so the gate's
test set is made of images unlike anything it was fitted on.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from ml_model.config import EXPORT_WINDOW
from ml_model.imaging.dicom import NON_CT_MODALITIES, decode_dicom

KINDS = (
    "photo",
    "noise",
    "gradient",
    "text",
    "chart",
    "document",
    "screenshot",
    "shapes",
    "objects",
    "other_modality",
)
WORDS = [
    "patient",
    "report",
    "scan",
    "normal",
    "image",
    "data",
    "value",
    "series",
    "study",
    "result",
    "table",
    "figure",
    "chart",
    "total",
    "the",
    "of",
    "and",
    "analysis",
    "model",
    "sample",
    "window",
    "level",
    "ratio",
    "invoice",
    "page",
]


@dataclass(frozen=True)
class Negative:
    kind: str
    source: str
    gray: np.ndarray  # 2-D uint8, as the decoder would hand it to the model
    held_out: bool


def _photo_sources() -> list[tuple[str, Callable[[], np.ndarray]]]:
    from skimage import data as skdata

    names = [
        "astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass", "gravel",
        "horse", "moon", "page", "text", "clock", "hubble_deep_field", "immunohistochemistry",
        "coins", "cell", "colorwheel", "logo", "retina", "motorcycle_left", "checkerboard",
    ]  # fmt: skip
    sources: list[tuple[str, Callable[[], np.ndarray]]] = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is not None:
            sources.append((f"skimage.{name}", loader))
    try:
        from sklearn.datasets import load_sample_image

        for name in ("china.jpg", "flower.jpg"):
            sources.append((f"sklearn.{name}", partial(load_sample_image, name)))
    except ImportError:  # pragma: no cover - scikit-learn is a runtime dependency
        pass
    return sources


def _to_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        low, high = float(image.min()), float(image.max())
        image = ((image - low) / (high - low or 1.0) * 255).astype(np.uint8)
    if image.ndim == 3:
        return np.asarray(Image.fromarray(image[..., :3]).convert("L"))
    return image


def _photo_variants(gray: np.ndarray, rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    """Random crops, flips, scales and contrast of one photo."""
    height, width = gray.shape
    for _ in range(count):
        side = int(rng.uniform(0.4, 1.0) * min(height, width))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = gray[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out = int(rng.choice([224, 256, 384, 512]))
        crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((out, out)))
        gain = rng.uniform(0.7, 1.3)
        yield np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    choice = rng.integers(3)
    if choice == 0:
        return np.clip(
            rng.normal(rng.uniform(30, 220), rng.uniform(5, 80), (size, size)), 0, 255
        ).astype(np.uint8)
    if choice == 1:
        return rng.integers(0, 256, (size, size), dtype=np.uint8)
    image = np.full((size, size), rng.integers(0, 256), np.uint8)
    mask = rng.random((size, size))
    image[mask < 0.05] = 0
    image[mask > 0.95] = 255
    return image


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        field = np.cos(angle) * xx + np.sin(angle) * yy
    else:
        cy, cx = rng.uniform(0, 1, 2)
        field = np.hypot(yy - cy, xx - cx)
    field = (field - field.min()) / (np.ptp(field) or 1.0)
    low, high = sorted(rng.uniform(0, 255, 2))
    return (low + field * (high - low)).astype(np.uint8)


def _random_text(rng: np.random.Generator, words: int) -> str:
    return " ".join(str(rng.choice(WORDS)) for _ in range(words))


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    dark = rng.random() < 0.5
    image = Image.new("L", (size, size), 0 if dark else int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 8))):
        xy = (int(rng.integers(0, size // 2)), int(rng.integers(0, size - 20)))
        fill = int(rng.integers(180, 256)) if dark else int(rng.integers(0, 80))
        draw.text(
            xy,
            _random_text(rng, int(rng.integers(1, 5))),
            fill=fill,
            font_size=int(rng.integers(10, 40)),
        )
    return np.asarray(image)


def _document(rng: np.random.Generator, size: int) -> np.ndarray:
    image = Image.new("L", (size, size), int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(image)
    font = int(rng.integers(8, 16))
    y = int(rng.integers(5, 30))
    if rng.random() < 0.5:  # a title
        draw.text((10, y), _random_text(rng, 3).upper(), fill=0, font_size=font + 6)
        y += font + 14
    while y < size - font:
        draw.text(
            (10, y),
            _random_text(rng, int(rng.integers(4, 14))),
            fill=int(rng.integers(0, 60)),
            font_size=font,
        )
        y += int(font * rng.uniform(1.3, 2.2))
    if rng.random() < 0.4:  # a table
        top = int(rng.integers(size // 3, size - 40))
        for row in range(5):
            draw.line((10, top + row * 12, size - 10, top + row * 12), fill=0)
    return np.asarray(image)


def _chart(rng: np.random.Generator, size: int) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 64
    figure, axes = plt.subplots(figsize=(size / dpi, size / dpi), dpi=dpi)
    n = int(rng.integers(5, 40))
    style = rng.integers(4)
    if style == 0:
        axes.plot(np.cumsum(rng.normal(size=n)))
    elif style == 1:
        axes.bar(range(n), rng.uniform(0, 10, n))
    elif style == 2:
        axes.scatter(rng.normal(size=n * 3), rng.normal(size=n * 3), s=8)
    else:
        axes.pie(rng.uniform(1, 5, 5))
    if rng.random() < 0.5:
        axes.set_title(_random_text(rng, 3))
    if rng.random() < 0.3:
        figure.patch.set_facecolor("black")
        axes.set_facecolor("black")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return np.asarray(Image.open(buffer).convert("L").resize((size, size)))


def _screenshot(rng: np.random.Generator, size: int) -> np.ndarray:
    background = int(rng.choice([20, 40, 235, 245, 255]))
    image = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size, int(rng.integers(16, 40))), fill=int(rng.integers(0, 256)))
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, size - 40)), int(rng.integers(20, size - 20))
        x1, y1 = x0 + int(rng.integers(20, size // 2)), y0 + int(rng.integers(10, 60))
        draw.rectangle(
            (x0, y0, min(x1, size - 1), min(y1, size - 1)),
            fill=int(rng.integers(0, 256)),
            outline=128,
        )
        draw.text((x0 + 3, y0 + 2), _random_text(rng, 2), fill=255 - background, font_size=11)
    return np.asarray(image)


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uniform ellipses, rectangles and flat squares (a bright ellipse is a classic probe)."""
    choice = rng.integers(3)
    if choice == 0:
        return np.full((size, size), int(rng.integers(0, 256)), np.uint8)
    image = Image.new("L", (size, size), int(rng.choice([0, 0, 30, 255])))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.1, 0.45, 2) * size
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        fill = int(rng.integers(150, 256))
        if choice == 1:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return np.asarray(image)


def _objects(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured round objects on a plain background (coins on a table, cells on a slide):
    bright, round and textured like bone in a body, but no body around them."""
    background = float(rng.choice([0, 40, 90, 140, 200]))
    image = np.full((size, size), background, np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(1, 12))):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        ry, rx = rng.uniform(0.04, 0.25, 2) * size
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        texture = rng.normal(rng.uniform(120, 250), rng.uniform(5, 40), (size, size))
        if rng.random() < 0.5:  # a rim, like a coin's edge or a cell wall
            rim = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 >= 0.7
            texture = np.where(rim, texture * rng.uniform(0.6, 1.2), texture)
        image = np.where(inside, texture, image)
    return np.clip(image, 0, 255).astype(np.uint8)


SYNTHETIC: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "noise": _noise,
    "gradient": _gradient,
    "text": _text,
    "chart": _chart,
    "document": _document,
    "screenshot": _screenshot,
    "shapes": _shapes,
    "objects": _objects,
}


def other_modality_files() -> list[str]:
    """pydicom's and pydicom-data's files whose Modality is not CT (MR, US, CR, NM, ...)."""
    import pydicom
    from pydicom.data import get_testdata_files

    found = []
    for path in sorted(get_testdata_files("*.dcm")):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # unreadable test files are not ours to judge here
            continue
        if str(dataset.get("Modality", "")) in NON_CT_MODALITIES:  # the pixels, not the header
            found.append(path)
    return found


def _dicom_grays(path: str) -> list[np.ndarray]:
    """The file's pixels through the export window, its (non-CT) Modality ignored: the
    product refuses such files by their header, the gate must refuse their pixels too
    (a screenshot or PNG export of an MR has no header)."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return [decode_dicom(data, *EXPORT_WINDOW, require_ct=False)]
    except Exception:  # a file the decoder refuses needs no gate
        return []


def generate(
    per_kind: int = 120,
    held_out_fraction: float = 0.25,
    seed: int = 0,
    other_modalities: bool = True,
) -> list[Negative]:
    """``per_kind`` images of every kind; a quarter of each held out (by source or seed)."""
    rng = np.random.default_rng(seed)
    negatives: list[Negative] = []
    photos = _photo_sources()
    order = rng.permutation(len(photos))
    held = {photos[i][0] for i in order[: max(1, round(len(photos) * held_out_fraction))]}
    # Few photo sources exist: many crops of each, so the photo kind weighs as much as the rest.
    per_photo = max(1, 2 * per_kind // len(photos) + 1)
    for name, loader in photos:
        for gray in _photo_variants(_to_gray(loader()), rng, per_photo):
            negatives.append(Negative("photo", name, gray, name in held))
    for kind, make in SYNTHETIC.items():
        cut = round(per_kind * (1 - held_out_fraction))
        for index in range(per_kind):
            size = int(rng.choice([224, 256, 384, 512]))
            negatives.append(Negative(kind, f"{kind}#{index}", make(rng, size), index >= cut))
    if other_modalities:
        files = other_modality_files()
        order = rng.permutation(len(files))
        held_files = {files[i] for i in order[: max(1, round(len(files) * held_out_fraction))]}
        for path in files:
            for gray in _dicom_grays(path):
                for variant in (
                    [gray, *_photo_variants(gray, rng, 3)] if min(gray.shape) > 32 else [gray]
                ):
                    negatives.append(
                        Negative(
                            "other_modality", path.rsplit("/", 1)[-1], variant, path in held_files
                        )
                    )
    return negatives
