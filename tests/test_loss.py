"""The vectorized hinge loss against the naive oracle, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svmtool.core.loss import (
    hinge,
    l2svm_loss_naive,
    loss_and_gradient,
    margins,
    squared_hinge,
    svm_loss,
    svm_loss_naive,
)


def problem(n: int, d: int, c: int, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    W = scale * rng.standard_normal((d, c))
    X = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    return W, X, y


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


@pytest.mark.parametrize(
    ("n", "d", "c"), [(1, 1, 2), (1, 5, 2), (2, 3, 3), (7, 4, 10), (50, 20, 2), (33, 17, 7)]
)
@pytest.mark.parametrize("delta", [0.0, 1.0, 3.5])
@pytest.mark.parametrize("reg", [0.0, 0.3])
def test_vectorized_matches_naive(n, d, c, delta, reg):
    W, X, y = problem(n, d, c, seed=n * 100 + d)
    loss_v, grad_v = svm_loss(W, X, y, reg, delta)
    loss_n, grad_n = svm_loss_naive(W, X, y, reg, delta)
    assert relative(loss_v, loss_n) < 1e-12
    assert relative(grad_v, grad_n) < 1e-12


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    d=st.integers(1, 8),
    c=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    delta=st.sampled_from([0.0, 0.5, 1.0]),
    quantize=st.booleans(),
)
def test_vectorized_matches_naive_property(n, d, c, seed, delta, quantize):
    W, X, y = problem(n, d, c, seed)
    if quantize:
        # Coarse values put many margins exactly on 0: the kink convention must agree.
        W, X = np.round(W), np.round(X)
    loss_v, grad_v = svm_loss(W, X, y, 0.1, delta)
    loss_n, grad_n = svm_loss_naive(W, X, y, 0.1, delta)
    assert loss_v == pytest.approx(loss_n, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad_v, grad_n, rtol=1e-12, atol=1e-12)


def test_zero_weights_give_c_minus_one_delta():
    _, X, y = problem(20, 6, 10)
    W = np.zeros((6, 10))
    assert svm_loss(W, X, y, 5.0, 1.0)[0] == pytest.approx(9.0)
    assert svm_loss(W, X, y, 0.0, 2.5)[0] == pytest.approx(9 * 2.5)


def test_margin_exactly_zero_is_inactive():
    # delta = 0 and W = 0: every margin is exactly 0, so nothing is active.
    _, X, y = problem(5, 3, 4)
    loss, grad = svm_loss(np.zeros((3, 4)), X, y, 0.0, 0.0)
    assert loss == 0.0
    assert not grad.any()


def test_loss_is_nonnegative_and_shift_invariant():
    W, X, y = problem(30, 8, 5, scale=0.5)
    assert svm_loss(W, X, y, 0.0, 1.0)[0] >= 0
    # Adding a constant to all scores of one sample changes nothing.
    scores = X @ W
    shifted = scores.copy()
    shifted[3] += 7.25
    a, ca = hinge(scores, y, 1.0)
    b, cb = hinge(shifted, y, 1.0)
    assert float(a) == pytest.approx(float(b), rel=1e-13)
    np.testing.assert_array_equal(ca, cb)


def test_one_dimensional_example_of_the_notes():
    # L = max(0, W1 x - W2 x + delta), x = 1, W1 = W2 = 1, delta = 0: on the kink.
    X = np.array([[1.0]])
    y = np.array([1])  # class 1 (W2) is the true class
    W = np.array([[1.0, 1.0]])
    loss, grad = svm_loss(W, X, y, 0.0, 0.0)
    assert loss == 0.0 and not grad.any()  # the margin 0 is inactive
    h = 1e-5
    plus, minus = W.copy(), W.copy()
    plus[0, 0] += h
    minus[0, 0] -= h
    numeric = (svm_loss(plus, X, y, 0.0, 0.0)[0] - svm_loss(minus, X, y, 0.0, 0.0)[0]) / (2 * h)
    assert numeric == pytest.approx(0.5)  # the average of the slopes 0 and 1
    # With delta = 1 the point is far from the kink: numeric and analytic agree.
    loss, grad = svm_loss(W, X, y, 0.0, 1.0)
    assert loss == 1.0 and grad[0, 0] == 1.0 and grad[0, 1] == -1.0


def test_gradient_against_centered_differences_away_from_kinks():
    W, X, y = problem(40, 6, 4, seed=3)
    reg, delta, h = 0.2, 1.0, 1e-6
    _, grad = svm_loss(W, X, y, reg, delta)
    m = margins(X @ W, y, delta)
    checked = 0
    for d in range(W.shape[0]):
        for c in range(W.shape[1]):
            # Skip coordinates whose step could reach a kink.
            reach = h * np.abs(X[:, d]).max() * 2
            if (np.abs(m[np.isfinite(m)]) <= reach).any():
                continue
            plus, minus = W.copy(), W.copy()
            plus[d, c] += h
            minus[d, c] -= h
            numeric = (
                svm_loss(plus, X, y, reg, delta)[0] - svm_loss(minus, X, y, reg, delta)[0]
            ) / (2 * h)
            assert numeric == pytest.approx(grad[d, c], rel=1e-6, abs=1e-8)
            checked += 1
    assert checked == W.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    W, X, y = problem(10, 4, 3)
    loss, grad = svm_loss(W.astype(dtype), X.astype(dtype), y, 0.1, 1.0)
    assert grad.dtype == dtype
    assert isinstance(loss, float)


def test_float32_agrees_with_float64():
    W, X, y = problem(200, 50, 10, scale=0.01)
    l64, g64 = svm_loss(W, X, y, 0.5, 1.0)
    l32, g32 = svm_loss(W.astype(np.float32), X.astype(np.float32), y, 0.5, 1.0)
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-5)


def test_bad_shapes_and_labels_are_refused():
    W, X, y = problem(5, 3, 4)
    with pytest.raises(ValueError, match="shapes do not match"):
        svm_loss(W, X[:, :2], y, 0.0)
    with pytest.raises(ValueError, match="labels"):
        svm_loss(W, X, y + 10, 0.0)


def test_stacked_scores_match_one_at_a_time():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((8, 3, 5))
    y = rng.integers(0, 5, 8)
    loss, coeff = hinge(scores, y, 1.0)
    for k in range(3):
        lk, ck = hinge(scores[:, k, :], y, 1.0)
        assert float(loss[k]) == pytest.approx(float(lk))
        np.testing.assert_allclose(coeff[:, k, :], ck)


def test_side_by_side_margins_and_coefficients_are_bit_identical_to_one_at_a_time():
    # K=16 takes other numpy paths (a repeated subtraction, a 2-D count): the same bits.
    rng = np.random.default_rng(4)
    scores = (2 * rng.standard_normal((200, 16, 10))).astype(np.float32)
    y = rng.integers(0, 10, 200)
    scores[:, :, 3] = scores[np.arange(200), :, y] - 1  # margins of exactly 0 (kinks)
    m = margins(scores, y, 1.0)
    loss, coeff = hinge(scores, y, 1.0)
    assert coeff.dtype == np.float32 and loss.shape == (16,)
    for k in range(16):
        lk, ck = hinge(scores[:, k, :], y, 1.0)
        assert np.array_equal(m[:, k, :], margins(scores[:, k, :], y, 1.0))
        assert np.array_equal(coeff[:, k, :], ck) and loss[k] == lk


def textbook_hinge(scores, y, delta):
    """The hinge from ``margins`` with fancy indexing: what ``hinge`` must equal bit for bit."""
    n = scores.shape[0]
    m = margins(scores, y, delta)
    beta = (m > 0).astype(scores.dtype)
    data_loss = np.maximum(m, 0).sum(axis=0).sum(axis=-1) / n
    beta[np.arange(n), ..., y] = -beta.sum(axis=-1)
    return data_loss, beta / n


@pytest.mark.parametrize("shape", [(200, 10), (200, 1, 10), (200, 16, 10), (9, 3, 2), (1, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hinge_is_bit_identical_to_the_textbook_formulation(shape, dtype):
    # hinge finds the true classes by flat positions (take and put), not fancy indexing.
    rng = np.random.default_rng(sum(shape))
    scores = (2 * rng.standard_normal(shape)).astype(dtype)
    y = rng.integers(0, shape[-1], shape[0])
    other = (y + 1) % shape[-1]
    scores[0, ..., other[0]] = scores[0, ..., y[0]] - 1  # a margin of exactly 0 (a kink)
    if shape[0] > 2:
        scores[2, ..., 0] = np.nan  # a diverged row: NaN loss, its margins inactive
    for view in (scores, np.repeat(scores, 2, axis=-2)[..., ::2, :] if len(shape) == 3 else scores):
        loss, coeff = hinge(view, y, 1.0)
        ref_loss, ref_coeff = textbook_hinge(view, y, 1.0)
        assert coeff.dtype == dtype and coeff.shape == view.shape
        np.testing.assert_array_equal(loss, ref_loss)
        np.testing.assert_array_equal(coeff, ref_coeff)


# --- the L2-SVM: one-vs-rest squared hinge ----------------------------------------------


@pytest.mark.parametrize(("n", "d", "c"), [(1, 1, 2), (7, 4, 10), (33, 17, 7)])
@pytest.mark.parametrize("delta", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("reg", [0.0, 0.3])
def test_squared_hinge_matches_naive(n, d, c, delta, reg):
    W, X, y = problem(n, d, c, seed=n * 10 + d)
    loss_v, grad_v = loss_and_gradient(W, X, y, reg, delta, loss="squared-hinge")
    loss_n, grad_n = l2svm_loss_naive(W, X, y, reg, delta)
    assert relative(loss_v, loss_n) < 1e-12
    assert relative(grad_v, grad_n) < 1e-12


def test_squared_hinge_gradient_against_finite_differences():
    # Smooth (C^1) everywhere, so centered differences agree with the analytic
    # gradient in every coordinate, kinks or not.
    W, X, y = problem(40, 6, 4, seed=3, scale=0.5)
    reg, h = 0.2, 1e-6
    _, grad = loss_and_gradient(W, X, y, reg, loss="squared-hinge")
    numeric = np.zeros_like(W)
    for index in np.ndindex(*W.shape):
        step = np.zeros_like(W)
        step[index] = h
        up = loss_and_gradient(W + step, X, y, reg, loss="squared-hinge")[0]
        down = loss_and_gradient(W - step, X, y, reg, loss="squared-hinge")[0]
        numeric[index] = (up - down) / (2 * h)
    assert relative(grad, numeric) < 1e-7
    # The notes' hinge is a different loss: the check would notice a mix-up.
    assert relative(svm_loss(W, X, y, reg)[1], numeric) > 1e-2


def test_squared_hinge_side_by_side_equals_one_at_a_time():
    W, X, y = problem(20, 5, 3, seed=4)
    scores = X @ W
    both = np.stack([scores, 3 * scores], axis=1)  # (N, K=2, C)
    loss2, coeff2 = squared_hinge(both, y, 1.0)
    for k, factor in enumerate((1, 3)):
        loss1, coeff1 = squared_hinge(factor * scores, y, 1.0)
        assert loss2[k] == pytest.approx(float(loss1), rel=1e-12)
        np.testing.assert_allclose(coeff2[:, k], coeff1, rtol=1e-12)


def test_unknown_loss_is_named():
    W, X, y = problem(3, 2, 2)
    with pytest.raises(ValueError, match="loss must be hinge or squared-hinge, got 'l1'"):
        loss_and_gradient(W, X, y, 0.1, loss="l1")
