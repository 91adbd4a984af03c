"""The heatmap the user sees: only inside the region the model saw (the spine crop), fading
out towards its edge, the region outlined; the slice untouched elsewhere."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ml_model.inference.explain import jet, normalise_cam, overlay_png, place_cam

SIZE = 96
BOX = np.array([0.25, 0.25, 0.75, 0.75])  # normalised [y0, x0, y1, x1]


def overlay(gray: np.ndarray, cam: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(overlay_png(gray, cam))).convert("RGB")).astype(int)


def test_a_placed_cam_is_masked_outside_the_crop_and_zero_underneath() -> None:
    cam = place_cam(np.ones((7, 7), np.float32), BOX, SIZE)
    assert np.ma.getmaskarray(cam)[0, 0] and not np.ma.getmaskarray(cam)[SIZE // 2, SIZE // 2]
    plain = np.asarray(cam)  # what arithmetic on it sees: the map as before, zero outside
    assert plain[0, 0] == 0 and plain[SIZE // 2, SIZE // 2] == 1
    assert normalise_cam(cam, (SIZE, SIZE)).max() == 1


def test_the_heatmap_is_drawn_only_where_the_model_looked_with_a_soft_outlined_edge() -> None:
    gray = np.full((SIZE, SIZE), 100, np.uint8)
    rgb = overlay(gray, place_cam(np.ones((7, 7), np.float32), BOX, SIZE))
    grey = np.array([100, 100, 100])
    seen = ~np.ma.getmaskarray(place_cam(np.ones((7, 7), np.float32), BOX, SIZE))
    rows, cols = np.nonzero(seen.any(axis=1))[0], np.nonzero(seen.any(axis=0))[0]
    top, left, bottom = rows[0], cols[0], rows[-1]
    # Outside the crop: the slice as it is.
    assert (rgb[~seen] == grey).all()
    # The crop's border: outlined (brighter than the slice).
    assert rgb[top, SIZE // 2].min() > 150 and rgb[bottom, SIZE // 2].min() > 150
    assert rgb[SIZE // 2, left].min() > 150
    # Soft edge: the same heat colours the centre more than just inside the outline.
    centre = np.abs(rgb[SIZE // 2, SIZE // 2] - grey).sum()
    near_edge = np.abs(rgb[top + 1, SIZE // 2] - grey).sum()
    assert centre > 2 * near_edge


def test_a_map_of_the_whole_input_is_blended_everywhere_without_an_outline() -> None:
    gray = np.full((SIZE, SIZE), 100, np.uint8)
    rgb = overlay(gray, np.ones((SIZE, SIZE), np.float32))
    assert (np.abs(rgb - 100).sum(axis=-1) > 0).all()
    assert rgb[0, 0].tolist() == rgb[SIZE // 2, SIZE // 2].tolist()


def test_the_jet_table_is_matplotlibs() -> None:
    """Serving colours heatmaps without matplotlib: the same colours, value for value."""
    from matplotlib import colormaps

    values = np.concatenate([np.linspace(0.0, 1.0, 4097), [0.0, 1.0, 0.5, 255.5 / 256]])
    np.testing.assert_allclose(jet(values), colormaps["jet"](values)[:, :3], atol=1e-9)
