"""The k-means feature pipeline of Coates, Lee & Ng (AISTATS 2011), in pure numpy.

Learning: random 6x6xC patches of the training images, each normalized
(p - mean) / sqrt(var + 10) on 0-255 pixels, ZCA-whitened (eps 0.1), then
k-means. Extraction: every 6x6 patch at stride 1, normalized and whitened the
same way; z_k = its distance to centroid k; the triangle activation
max(0, mean_k(z) - z_k); sums over the image's four quadrants: 4K features.

The cost is the patch-to-centroid distances. They are computed as one float32
matrix product per block of images, with the affine parts folded into it:
[x, |x|^2, 1] @ [-2 C^T; 1; |c|^2] = |x - c|^2. Blocks run on a small pool of
threads, one per core, each with a single-threaded BLAS (numpy and BLAS
release the GIL), and memory stays bounded by the block size.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from svmtool.core.threads import cores, one_blas_thread

PATCH = 6
NORM_EPS = 10.0  # per-patch normalization: (p - mean) / sqrt(var + 10), 0-255 pixels
WHITEN_EPS = 0.1  # ZCA: V diag(1 / sqrt(d + 0.1)) V^T
ROWS_PER_BLOCK = 4096  # patches per distance product: ~26 MB at K = 1600

ProgressFn = Callable[[int, int], None]


def _threads() -> int:
    """One worker per core (BLAS is held to one thread meanwhile). The workers
    take blocks from a shared queue and never wait for each other within an
    iteration, so a core held by another process slows its worker only: the
    other takes more blocks (unlike BLAS's own threads, which meet at the end of
    every product; see svmtool.core.threads)."""
    return cores()


def patch_dim(channels: int) -> int:
    return PATCH * PATCH * channels


# --- patches, normalization, whitening ----------------------------------------------------


def sample_patches(images: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random 6x6 patches (image and position uniform), as (count, 36*C)
    float32 rows in (row, column, channel) order. images: (N, H, W, C) uint8."""
    n, h, w, c = images.shape
    which = rng.integers(0, n, count)
    top = rng.integers(0, h - PATCH + 1, count)
    left = rng.integers(0, w - PATCH + 1, count)
    out = np.empty((count, patch_dim(c)), dtype=np.float32)
    chunk = 65536
    dr, dc = np.meshgrid(np.arange(PATCH), np.arange(PATCH), indexing="ij")
    for s in range(0, count, chunk):
        i = which[s : s + chunk, None, None]
        r = top[s : s + chunk, None, None] + dr
        q = left[s : s + chunk, None, None] + dc
        out[s : s + chunk] = images[i, r, q].reshape(-1, patch_dim(c))
    return out


def normalize_patches(patches: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """In place: each row (p - mean(p)) / sqrt(var(p) + eps), var with N - 1 as in
    the paper's MATLAB code. patches: (M, P) float32. Returns ``patches``."""
    p = patches.shape[1]
    mean = patches.mean(axis=1, keepdims=True)
    patches -= mean
    var = np.einsum("ij,ij->i", patches, patches) / (p - 1)
    patches *= (1.0 / np.sqrt(var + eps))[:, None].astype(patches.dtype)
    return patches


def fit_whitening(patches: np.ndarray, eps: float = WHITEN_EPS) -> tuple[np.ndarray, np.ndarray]:
    """ZCA of normalized patches (M, P): mean (P,) and symmetric matrix (P, P) such
    that (x - mean) @ matrix has covariance close to identity (exactly
    V diag(d / (d + eps)) V^T)."""
    x = patches.astype(np.float64)
    mean = x.mean(axis=0)
    x -= mean
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    d, v = np.linalg.eigh(cov)
    d = np.maximum(d, 0.0)
    matrix = (v * (1.0 / np.sqrt(d + eps))) @ v.T
    return mean, matrix


# A ZCA matrix V diag(1 / sqrt(d + eps)) V^T has eigenvalues in (0, 1 / sqrt(eps)];
# on normalized patches their spread is a few tens. Beyond this condition number
# the matrix cannot be inverted meaningfully (visualize maps centroids back).
MAX_WHITEN_CONDITION = 1e6


def whitening_problem(matrix: np.ndarray) -> str | None:
    """Why ``matrix`` (P, P) is not a ZCA whitening matrix, or None: it must be
    finite, symmetric and positive definite (so it can be inverted)."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        return f"is {matrix.shape}, not a square matrix"
    m = matrix.astype(np.float64)
    if not np.isfinite(m).all():
        return "holds NaN or infinite values"
    peak = float(np.abs(m).max(initial=0.0))
    if peak == 0.0:
        return "is all zeros (singular)"
    if np.abs(m - m.T).max() > 1e-6 * peak:
        return "is not symmetric"
    try:
        eigen = np.linalg.eigvalsh(m)
    except np.linalg.LinAlgError:
        return "cannot be decomposed"
    low, high = float(eigen[0]), float(eigen[-1])
    if low < -1e-9 * max(abs(high), abs(low)):
        return f"is not positive definite (an eigenvalue of {low:.3g})"
    if low <= high / MAX_WHITEN_CONDITION:
        return f"is singular (eigenvalues from {low:.3g} to {high:.3g})"
    return None


def whiten(patches: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(patches - mean) @ matrix in float32, in row blocks."""
    out = np.empty(patches.shape, dtype=np.float32)
    m, w = mean.astype(np.float32), matrix.astype(np.float32)
    for s in range(0, patches.shape[0], 65536):
        np.matmul(patches[s : s + 65536] - m, w, out=out[s : s + 65536])
    return out


# --- k-means ---------------------------------------------------------------------------------


def kmeans(
    x: np.ndarray,
    k: int,
    iters: int,
    rng: np.random.Generator,
    on_iteration: Callable[[int, int], None] | None = None,
    chunk: int = 8192,
    tol: float = 0.0,
    history: list[float] | None = None,
) -> np.ndarray:
    """Lloyd's k-means on rows x (M, P) float32: centroids (k, P) float32.

    Starts from k distinct random rows; an empty cluster is reseeded with a
    random row. The nearest centroid is argmax_k x.c_k - |c_k|^2 / 2, one
    product of [x, 1] with [C^T; -|c|^2 / 2], in row chunks on a thread pool
    (bounded memory: chunk x k scores per thread).

    Stops early when an iteration lowers the mean squared distance to the
    nearest centroid by less than ``tol`` (relative; 0: run all ``iters``).
    ``history``, if given, receives that mean distance at each iteration.
    """
    if not (tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be >= 0, got {tol}")
    m, p = x.shape
    if not 1 <= k <= m:
        raise ValueError(f"k-means needs 1 <= centroids <= patches, got {k} and {m}")
    centroids = x[np.sort(rng.choice(m, k, replace=False))].astype(np.float32)
    augmented = np.empty((m, p + 1), dtype=np.float32)
    augmented[:, :p] = x
    augmented[:, p] = 1.0
    starts = list(range(0, m, chunk))
    scorer = np.empty((p + 1, k), dtype=np.float32)

    def assign_and_sum(s: int) -> tuple[np.ndarray, np.ndarray, float]:
        """This chunk's per-cluster sums (k, p) float64, counts (k,) and the sum of
        its best scores: the update's work happens in the workers too."""
        rows = x[s : s + chunk]
        scores = augmented[s : s + chunk] @ scorer
        labels = scores.argmax(axis=1)
        top = float(scores[np.arange(labels.size), labels].sum(dtype=np.float64))
        counts = np.bincount(labels, minlength=k)
        order = np.argsort(labels, kind="stable")
        present = counts > 0
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
        sums = np.zeros((k, p), dtype=np.float64)
        sums[present] = np.add.reduceat(rows[order], firsts, axis=0, dtype=np.float64)
        return sums, counts, top

    # |x - c|^2 = |x|^2 - 2 (x.c - |c|^2 / 2): the distances from the best scores.
    norms = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    previous = np.inf
    with one_blas_thread(), ThreadPoolExecutor(_threads()) as pool:
        for it in range(iters):
            scorer[:p] = centroids.T
            scorer[p] = -0.5 * np.einsum("ij,ij->i", centroids, centroids)
            sums = np.zeros((k, p), dtype=np.float64)
            counts = np.zeros(k, dtype=np.int64)
            best_scores = 0.0
            for part_sums, part_counts, part_top in pool.map(assign_and_sum, starts):
                sums += part_sums
                counts += part_counts
                best_scores += part_top
            distance = max(norms - 2.0 * best_scores, 0.0) / m
            if history is not None:
                history.append(distance)
            # The assignment barely moved: the centroids (updated below from it)
            # are about as good as more iterations would make them.
            done = previous - distance <= tol * distance
            previous = distance
            present = counts > 0
            centroids[present] = (sums[present] / counts[present, None]).astype(np.float32)
            empty = np.flatnonzero(~present)
            if empty.size:
                centroids[empty] = x[rng.choice(m, empty.size, replace=False)]
            if on_iteration:
                on_iteration(it + 1, iters)
            if done and tol > 0:
                break
    return centroids


def fit_bytes(centroids: int, patches: int, channels: int, threads: int | None = None) -> dict:
    """Peak memory of ``fit`` (bytes), by what drives it: {'patches', 'centroids'}.

    The patches: sampled float32, the float64 copy the whitening is fitted on,
    then the whitened copy and k-means' augmented copy. The centroids: each
    worker's chunk of scores (chunk x K) and per-cluster sums (K x P, float64).
    """
    p = patch_dim(channels)
    threads = threads or _threads()
    return {
        "patches": patches * p * (4 + 8) + patches * (p + 1) * 4,
        "centroids": threads * (8192 * centroids * 4 + 2 * centroids * p * 8)
        + centroids * (p + 1) * 8,
    }


def extract_bytes(centroids: int, image_shape: tuple[int, ...], threads: int | None = None) -> int:
    """Working memory of ``extract`` besides its output (bytes): each worker's
    block of patches and its distances to every centroid."""
    h, w, c = image_shape
    p = patch_dim(c)
    rows = max(ROWS_PER_BLOCK, (h - PATCH + 1) * (w - PATCH + 1))
    threads = threads or _threads()
    return threads * rows * (2 * (p + 2) + centroids) * 4 + (p + 2) * centroids * 4


# --- extraction ------------------------------------------------------------------------------


def distance_matrix(centroids: np.ndarray) -> np.ndarray:
    """[-2 C^T; 1; |c|^2] (P+2, K) float32: [x, |x|^2, 1] @ it = squared distances."""
    k, p = centroids.shape
    c = centroids.astype(np.float64)
    out = np.empty((p + 2, k), dtype=np.float64)
    out[:p] = -2.0 * c.T
    out[p] = 1.0
    out[p + 1] = np.einsum("ij,ij->i", c, c)
    return out.astype(np.float32)


def image_patches(images: np.ndarray) -> np.ndarray:
    """Every 6x6 patch at stride 1: (B, H, W, C) -> (B * (H-5) * (W-5), 36*C) float32,
    in (row, column, channel) order within a patch, patches row-major per image."""
    c = images.shape[3]
    windows = np.lib.stride_tricks.sliding_window_view(images, (PATCH, PATCH), axis=(1, 2))
    # windows: (B, H-5, W-5, C, 6, 6) -> (B, H-5, W-5, 6, 6, C)
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch_dim(c)).astype(np.float32)


def triangle_pool(sq_dist: np.ndarray, b: int, ph: int, pw: int, sub: int = 256) -> np.ndarray:
    """Triangle activation and quadrant sum pooling, in place on the squared distances.

    sq_dist: (b * ph * pw, K) for b images with ph x pw patch positions.
    Returns (b, 4K): quadrant sums in the paper's order (top-left, bottom-left,
    top-right, bottom-right), the top/left halves round(ph/2) positions long.

    max(0, mu - z) = mu - min(z, mu), so a quadrant's sum is the sum of its mu
    minus the sum of min(z, mu): one element-wise pass fewer than subtracting
    and clipping. The element-wise passes run on ``sub`` rows at a time, which
    stay in cache.
    """
    z = sq_dist
    k = z.shape[1]
    mean_weights = np.full(k, 1.0 / k, dtype=z.dtype)
    mus = np.empty(z.shape[0], dtype=np.float32)
    for s in range(0, z.shape[0], sub):
        part = z[s : s + sub]
        # |x - c|^2 from the expansion can round to a tiny negative number;
        # abs maps it to an equally tiny positive one (faster than a max).
        np.abs(part, out=part)
        np.sqrt(part, out=part)
        mu = part @ mean_weights  # the mean distance, as a product (faster than .mean)
        mus[s : s + sub] = mu
        np.minimum(part, mu[:, None], out=part)
    act = z.reshape(b, ph, pw * k)
    hr, hc = (ph + 1) // 2, (pw + 1) // 2  # MATLAB's round(ph / 2)
    top = act[:, :hr].sum(axis=1).reshape(b, pw, k)
    bottom = act[:, hr:].sum(axis=1).reshape(b, pw, k)
    mu_grid = mus.reshape(b, ph, pw).astype(np.float64)
    quadrants = (
        (top[:, :hc], mu_grid[:, :hr, :hc]),
        (bottom[:, :hc], mu_grid[:, hr:, :hc]),
        (top[:, hc:], mu_grid[:, :hr, hc:]),
        (bottom[:, hc:], mu_grid[:, hr:, hc:]),
    )
    out = np.empty((b, 4, k), dtype=np.float32)
    for q, (mins, mu_part) in enumerate(quadrants):
        out[:, q] = mu_part.sum(axis=(1, 2))[:, None] - mins.sum(axis=1)
    return out.reshape(b, 4 * k)


def extract(
    images: np.ndarray,
    centroids: np.ndarray,
    whiten_mean: np.ndarray,
    whiten_matrix: np.ndarray,
    progress: ProgressFn | None = None,
    rows_per_block: int = ROWS_PER_BLOCK,
) -> np.ndarray:
    """Pooled triangle features (N, 4K) float32 of uint8 images (N, H, W, C), H, W >= 6.

    Images go through in blocks of about ``rows_per_block`` patches, each block
    one distance product; memory is a few blocks whatever N is.
    """
    n, h, w, c = images.shape
    k = centroids.shape[0]
    ph, pw = h - PATCH + 1, w - PATCH + 1
    per_block = max(1, rows_per_block // (ph * pw))
    dist = distance_matrix(centroids)
    wm, wmat = whiten_mean.astype(np.float32), whiten_matrix.astype(np.float32)
    p = patch_dim(c)
    out = np.empty((n, 4 * k), dtype=np.float32)

    def work(start: int) -> int:
        block = images[start : start + per_block]
        patches = normalize_patches(image_patches(np.asarray(block)))
        aug = np.empty((patches.shape[0], p + 2), dtype=np.float32)
        patches -= wm
        np.matmul(patches, wmat, out=aug[:, :p])
        aug[:, p] = np.einsum("ij,ij->i", aug[:, :p], aug[:, :p])
        aug[:, p + 1] = 1.0
        out[start : start + block.shape[0]] = triangle_pool(aug @ dist, block.shape[0], ph, pw)
        return block.shape[0]

    done = 0
    with one_blas_thread(), ThreadPoolExecutor(_threads()) as pool:
        for count in pool.map(work, range(0, n, per_block)):
            done += count
            if progress:
                progress(done, n)
    return out


def fit(
    images: np.ndarray,
    centroids: int,
    patches: int,
    iters: int,
    rng: np.random.Generator,
    on_iteration: Callable[[int, int], None] | None = None,
    tol: float = 0.0,
) -> dict[str, np.ndarray]:
    """Learn the dictionary from training images (N, H, W, C) uint8:
    {'centroids' (K, P), 'whiten_mean' (P,), 'whiten' (P, P)}. ``tol``: see ``kmeans``."""
    x = normalize_patches(sample_patches(images, patches, rng))
    mean, matrix = fit_whitening(x)
    x = whiten(x, mean, matrix)
    found = kmeans(x, centroids, iters, rng, on_iteration, tol=tol)
    return {"centroids": found, "whiten_mean": mean, "whiten": matrix}
