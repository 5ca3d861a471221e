"""HOG, the hue histogram, standardization (svmtool.core.features)."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.core import features as F


def test_vertical_edge_puts_its_weight_in_the_vertical_bin():
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, :, 16:] = 255  # dark to bright at column 16
    h = F.hog(image)[0]  # (4, 4, 9)
    # gx > 0 at column 15 only: orientation atan2(0, gx) + 90 = 90 degrees, bin 4 (80-100).
    expected = 255 * F.GRAY_WEIGHTS.sum() * 8 / 64  # 8 of the cell's 64 pixels, averaged
    np.testing.assert_allclose(h[:, 1, 4], expected, rtol=1e-6)
    h[:, 1, 4] = 0
    assert not h.any()  # no other cell or bin


def test_edges_are_unsigned_and_horizontal_edges_land_in_bin_0():
    dark_to_bright = np.zeros((1, 16, 16, 1), np.uint8)
    dark_to_bright[0, :, 8:] = 200
    bright_to_dark = 200 - dark_to_bright
    np.testing.assert_allclose(F.hog(dark_to_bright), F.hog(bright_to_dark))
    horizontal = np.zeros((1, 16, 16, 1), np.uint8)
    horizontal[0, 8:, :] = 200  # gy > 0 at row 7: 90 + 90 = 180, folded to 0
    h = F.hog(horizontal)[0]
    assert h[0, :, 0].min() > 0 and h[..., 1:].max() == 0


def naive_hog(gray: np.ndarray) -> np.ndarray:
    """One image, loops over pixels: the definition, as an oracle."""
    h, w = gray.shape
    rows, cols, ch, cw = F.hog_cells((h, w))
    out = np.zeros((rows, cols, 9))
    for r in range(rows * ch):
        for c in range(cols * cw):
            # float32 differences, as the vectorized code takes them
            gx = float(gray[r, c + 1] - gray[r, c]) if c + 1 < w else 0.0
            gy = float(gray[r + 1, c] - gray[r, c]) if r + 1 < h else 0.0
            angle = (np.degrees(np.arctan2(gy, gx + 1e-15)) + 90) % 180
            out[r // ch, c // cw, min(int(angle // 20), 8)] += np.hypot(gx, gy) / (ch * cw)
    return out


@pytest.mark.parametrize("shape", [(32, 32, 3), (20, 13, 1), (6, 7, 3)])
def test_hog_matches_a_per_pixel_loop(shape):
    images = np.random.default_rng(1).integers(0, 256, (3, *shape), dtype=np.uint8)
    got = F.hog(images)
    for i in range(3):
        gray = F.grayscale(images[i : i + 1])[0]
        np.testing.assert_allclose(got[i], naive_hog(gray), rtol=2e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("colour", "bin_"),
    [((255, 0, 0), 0), ((0, 255, 0), 3), ((0, 0, 255), 6), ((255, 255, 0), 1), ((90, 90, 90), 0)],
)
def test_hue_histogram_of_a_pure_colour(colour, bin_):
    image = np.zeros((1, 8, 8, 3), np.uint8) + np.array(colour, np.uint8)
    hist = F.hue_histogram(image)[0]
    expected = np.zeros(10, np.float32)
    expected[bin_] = 1.0
    np.testing.assert_array_equal(hist, expected)


def test_hue_histogram_equals_cs231n_with_matplotlib():
    from matplotlib.colors import rgb_to_hsv

    images = np.random.default_rng(2).integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    images[0, :3] = 128  # some grey pixels, some ties
    images[1, :, :, 1] = images[1, :, :, 2]
    ours = F.hue_histogram(images)
    bins = np.linspace(0, 255, 11)
    for i, im in enumerate(images):
        hsv = rgb_to_hsv(im / 255) * 255  # CS231n's color_histogram_hsv
        hist, edges = np.histogram(hsv[:, :, 0], bins=bins, density=True)
        np.testing.assert_allclose(ours[i], hist * np.diff(edges), atol=1e-6)


def test_hog_feature_length_and_grayscale_has_no_hue():
    assert F.hog_dim((32, 32, 3)) == 144 + 10
    assert F.hog_dim((28, 28, 1)) == 9 * 9
    gray = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    assert F.hog_features(gray).shape == (4, 81)


def test_standardization_over_chosen_rows():
    rng = np.random.default_rng(0)
    raw = rng.normal(3, 2, (50, 4)).astype(np.float32)
    raw[:, 2] = 7  # constant: scale 1, not a division by zero
    rows = rng.permutation(50)[:30]
    mean, scale = F.standardization(raw, rows=rows)
    np.testing.assert_allclose(mean, raw[rows].mean(0), rtol=1e-6)
    np.testing.assert_allclose(scale[[0, 1, 3]], raw[rows][:, [0, 1, 3]].std(0), rtol=1e-5)
    assert scale[2] == 1
    X = F.standardized_rows(raw, mean, scale, rows)
    assert X.shape == (30, 5) and (X[:, -1] == 1).all()
    np.testing.assert_allclose(X[:, [0, 1, 3]].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(X[:, [0, 1, 3]].std(0), 1, rtol=1e-4)
    _, eps_scale = F.standardization(raw, eps=0.01, rows=rows)
    np.testing.assert_allclose(eps_scale[0], np.sqrt(raw[rows][:, 0].var() + 0.01), rtol=1e-5)


def test_cell_size_fits_the_image():
    assert F.hog_cell_size((32, 32)) == 8  # CS231n's, 4 x 4 cells
    assert F.hog_cell_size((28, 28)) == 7  # 4 x 4 cells; 8 would leave 4 pixels per side
    assert F.hog_cell_size((30, 30)) == 6  # 5 x 5 cells, none unused
    assert F.hog_cell_size((64, 48)) == 8
    assert F.hog_cell_size((5, 5)) == 8  # one cell across a small image, as before
    assert F.hog_cells((28, 28), 7) == (4, 4, 7, 7)


def test_power_and_cell_colours():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    plain = F.hog_features(images)
    rooted = F.hog_features(images, power=0.5, colour=True)
    assert rooted.shape == (3, F.hog_dim((16, 16, 3), colour=True)) == (3, 2 * 2 * 9 + 10 + 12)
    np.testing.assert_allclose(rooted[:, : plain.shape[1]], np.sqrt(plain), rtol=1e-6)
    # the colour part: each 8 x 8 cell's mean of each channel, / 255, not rooted
    first = images[0, :8, :8].reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(rooted[0, plain.shape[1] : plain.shape[1] + 3], first, rtol=1e-6)
