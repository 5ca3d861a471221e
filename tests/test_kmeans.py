"""The k-means feature pipeline (svmtool.core.kmeans) against direct computations."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from svmtool.core import kmeans as K


def direct_features(image, centroids, wmean, wmatrix):
    """One image, patch by patch, with the distances computed as norms of differences."""
    h, w, _ = image.shape
    ph, pw = h - 5, w - 5
    act = np.zeros((ph, pw, centroids.shape[0]))
    for r in range(ph):
        for q in range(pw):
            p = image[r : r + 6, q : q + 6].reshape(-1).astype(np.float64)
            p = (p - p.mean()) / np.sqrt(p.var(ddof=1) + 10)
            x = (p - wmean) @ wmatrix
            z = np.linalg.norm(x[None] - centroids, axis=1)
            act[r, q] = np.maximum(0, z.mean() - z)
    hr, hc = int(np.floor(ph / 2 + 0.5)), int(np.floor(pw / 2 + 0.5))  # MATLAB's round
    quads = [act[:hr, :hc], act[hr:, :hc], act[:hr, hc:], act[hr:, hc:]]
    return np.concatenate([q.sum(axis=(0, 1)) for q in quads])


@pytest.mark.parametrize("shape", [(11, 9, 3), (6, 6, 1), (10, 12, 1)])
def test_extraction_equals_the_direct_computation(shape):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, *shape), dtype=np.uint8)
    p = 36 * shape[2]
    centroids = rng.normal(0, 1, (5, p)).astype(np.float32)
    a = rng.normal(0, 0.3, (p, p))
    wmatrix = a @ a.T + np.eye(p)  # symmetric, like a ZCA matrix
    wmean = rng.normal(0, 0.1, p)
    # rows_per_block small: several blocks, run on the thread pool
    got = K.extract(images, centroids, wmean, wmatrix, rows_per_block=40)
    assert got.shape == (7, 20) and got.dtype == np.float32
    for i in range(7):
        expected = direct_features(images[i], centroids.astype(np.float64), wmean, wmatrix)
        np.testing.assert_allclose(got[i], expected, rtol=2e-3, atol=2e-3 * expected.max())


def test_triangle_activation_and_quadrant_pooling_by_hand():
    # one image, 3 x 3 patch positions (halves: 2 and 1), K = 2
    z = np.array([[1.0, 3.0], [2.0, 2.0], [4.0, 0.0]] * 3, dtype=np.float32)  # distances
    got = K.triangle_pool(z**2, 1, 3, 3)[0]
    # mean distances 2, 2, 2: activations (1, 0), (0, 0), (0, 2) in every row of positions
    act = np.array([[1, 0], [0, 0], [0, 2]], dtype=np.float32)
    grid = np.stack([act] * 3)  # (3 rows, 3 columns, K)
    expected = np.concatenate(
        [grid[:2, :2].sum((0, 1)), grid[2:, :2].sum((0, 1)), grid[:2, 2:].sum((0, 1)),
         grid[2:, 2:].sum((0, 1))]
    )  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tiny_negative_squared_distances_do_not_make_nan():
    z = np.array([[-1e-6, 4.0, 16.0]], dtype=np.float32)  # rounding below 0
    got = K.triangle_pool(z, 1, 1, 1)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0, :3], [2.0, 0.0, 0.0], atol=1e-2)


def test_normalization_matches_the_papers_formula():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 256, (20, 108)).astype(np.float32)
    expected = (p - p.mean(1, keepdims=True)) / np.sqrt(p.var(1, ddof=1, keepdims=True) + 10)
    np.testing.assert_allclose(K.normalize_patches(p.copy()), expected, rtol=1e-4, atol=1e-5)


def test_whitening_makes_the_covariance_near_identity():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(0, 1, (12, 12)))
    mix = np.diag(np.linspace(5, 50, 12)) @ rotation  # correlated, every variance >= 25
    x = (rng.normal(0, 1, (40000, 12)) @ mix + 5).astype(np.float32)
    mean, matrix = K.fit_whitening(x, eps=0.1)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-10)
    w = K.whiten(x, mean, matrix).astype(np.float64)
    cov = np.cov(w, rowvar=False)
    # eps = 0.1 shrinks a direction of variance d by d / (d + 0.1): here d >= 25
    np.testing.assert_allclose(cov, np.eye(12), atol=0.02)
    assert np.abs(np.cov(x, rowvar=False) - np.eye(12)).max() > 100  # it was not before


def test_kmeans_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=np.float32)
    x = (centres[rng.integers(0, 4, 4000)] + rng.normal(0, 0.5, (4000, 3))).astype(np.float32)
    found = K.kmeans(x, 4, 20, np.random.default_rng(3), chunk=500)
    distances = np.linalg.norm(centres[:, None] - found[None], axis=2)
    assert sorted(distances.argmin(axis=1)) == [0, 1, 2, 3]  # one centroid per blob
    assert distances.min(axis=1).max() < 0.1


def test_kmeans_stops_when_the_mean_distance_stops_falling():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3000, 4)).astype(np.float32)  # no clusters: many slow iterations
    history: list[float] = []
    full = K.kmeans(x, 20, 60, np.random.default_rng(1), chunk=700, history=history)
    assert len(history) == 60
    # The history is the mean squared distance to the nearest centroid, and falls.
    d2 = ((x[:, None] - x[np.sort(np.random.default_rng(1).choice(3000, 20, replace=False))])
          ** 2).sum(axis=2)  # fmt: skip
    assert history[0] == pytest.approx(d2.min(axis=1).mean(), rel=1e-4)
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(history))
    stopped: list[float] = []
    seen = []
    early = K.kmeans(x, 20, 60, np.random.default_rng(1), chunk=700, tol=1e-3,
                     history=stopped, on_iteration=lambda i, n: seen.append(i))  # fmt: skip
    assert 2 < len(stopped) < 60 and seen[-1] == len(stopped)
    # The iteration it stopped at improved by less than tol; the one before by more.
    assert stopped[-2] - stopped[-1] <= 1e-3 * stopped[-1] < stopped[-3] - stopped[-2]
    np.testing.assert_allclose(stopped, history[: len(stopped)], rtol=1e-6)
    assert early.shape == full.shape
    with pytest.raises(ValueError, match="tol"):
        K.kmeans(x, 20, 5, np.random.default_rng(1), tol=-1.0)


def test_kmeans_reseeds_empty_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    # 30 copies of one point plus 30 of another: with 3 centroids one cluster starts
    # as a duplicate and goes empty; it must be reseeded, never left as NaN.
    x = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]], np.float32), 30, axis=0)
    x = x[rng.permutation(60)]
    a = K.kmeans(x, 3, 5, np.random.default_rng(1))
    b = K.kmeans(x, 3, 5, np.random.default_rng(1))
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="centroids"):
        K.kmeans(x, 61, 5, np.random.default_rng(1))


def test_sampled_patches_come_from_the_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 9, 8, 3), dtype=np.uint8)
    patches = K.sample_patches(images, 50, np.random.default_rng(1))
    assert patches.shape == (50, 108)
    every = K.image_patches(images)  # all positions, same layout
    for p in patches[:10]:
        assert (np.abs(every - p).sum(axis=1) == 0).any()


def test_an_error_in_one_block_cancels_the_blocks_not_started(monkeypatch):
    """Ctrl-C or an error stops extraction at once (Executor.map cancels what it
    has not started), rather than after every queued block."""
    calls = []

    def failing(z, b, ph, pw):
        calls.append(b)
        if len(calls) > 1:
            # later blocks take a while, so a loaded machine that delays the main thread's
            # cancel by a few hundred ms does not let the workers run through the queue
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(K, "triangle_pool", failing)
    images = np.zeros((200, 6, 6, 1), np.uint8)
    centroids = np.ones((2, 36), np.float32)
    with pytest.raises(KeyboardInterrupt):
        K.extract(images, centroids, np.zeros(36), np.eye(36), rows_per_block=1)
    assert len(calls) < 50  # 200 one-image blocks were queued; most never ran
