"""The gradient check: kinks are explained, real mistakes fail."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.core.gradcheck import (
    check_coordinate,
    draw_coordinates,
    gradcheck,
    near_kink_fraction,
    relative_error,
    straddle_map,
    straddling,
    sweep_delta,
)
from svmtool.core.loss import active, hinge, margins, svm_loss


def batch(n=60, d=12, c=5, seed=0, scale=1e-2):
    rng = np.random.default_rng(seed)
    X = 50 * rng.standard_normal((n, d))
    X[:, -1] = 1.0
    y = rng.integers(0, c, n)
    W = scale * rng.standard_normal((d, c))
    return W, X, y


def wrong_loss(W, X, y, reg, delta):
    """The classic mistake: no -sum(beta) term on the true class."""
    data_loss, coeff = hinge(X @ W, y, delta)
    coeff[np.arange(len(y)), y] = 0.0
    return float(data_loss) + reg * float((W * W).sum()), X.T @ coeff + 2 * reg * W


def test_relative_error_definition():
    assert relative_error(0.0, 0.0) == 0.0
    assert relative_error(1.0, 1.0) == 0.0
    assert relative_error(1.0, -1.0) == 1.0


def test_correct_gradient_passes():
    W, X, y = batch()
    coords = draw_coordinates(W.shape, 30, np.random.default_rng(0))
    report = gradcheck(W, X, y, coords, reg=0.1, delta=1.0)
    assert all(c.status in ("ok", "kink") for c in report.checks)
    assert report.worst_kink_free_error < 1e-8


def test_wrong_gradient_fails():
    W, X, y = batch()
    coords = [(d, c) for d in range(W.shape[0]) for c in range(W.shape[1])]
    report = gradcheck(W, X, y, coords, delta=1.0, loss_fn=wrong_loss)
    assert any(c.status == "FAIL" for c in report.checks)


def point_on_a_kink():
    """Sample 0's margin against class 1 is exactly 0 at this W."""
    X = np.array([[1.0, 2.0], [3.0, 1.0], [-2.0, 1.0]])
    y = np.array([0, 2, 1])
    W = np.array([[0.5, 0.0, -1.0], [0.25, 0.0, 0.0]])
    # Sample 0: scores (1.0, 0.0, -1.0); margin vs class 1 = 0.0 - 1.0 + 1.0 = 0.
    # Every other margin is at least 0.25 away from 0.
    return W, X, y


def test_point_on_a_kink_is_kink_not_fail_and_names_the_sample():
    W, X, y = point_on_a_kink()
    assert margins(X @ W, y, 1.0)[0, 1] == 0.0
    check = check_coordinate(W, X, y, 0.0, 1.0, d=0, c=1, h=1e-5)
    assert check.rel_error > 1e-3  # the centered difference averages two slopes
    assert check.status == "kink"
    assert check.straddled == 1
    assert [(k.sample, k.label, k.cls) for k in check.kinks] == [(0, 0, 1)]
    assert check.kinks[0].margin == 0.0
    assert check.kinks[0].step == pytest.approx(1e-5 * abs(X[0, 0]))
    assert check.kink_free_rel_error is not None and check.kink_free_rel_error < 1e-8


def test_wrong_gradient_on_a_kink_still_fails():
    # (0, 1) straddles sample 0's kink, but sample 2 (label 1) carries the
    # true-class term the wrong gradient forgets: removing sample 0 cannot hide it.
    W, X, y = point_on_a_kink()
    check = check_coordinate(W, X, y, 0.0, 1.0, d=0, c=1, h=1e-5, loss_fn=wrong_loss)
    assert check.straddled == 1
    assert check.status == "FAIL"


def brute_force_flips(W, X, y, delta, d, c, h):
    """Count active margins one sample at a time, at W + h e and W - h e."""
    flips = set()
    plus, minus = W.copy(), W.copy()
    plus[d, c] += h
    minus[d, c] -= h
    for n in range(X.shape[0]):
        for j in range(W.shape[1]):
            if j == y[n]:
                continue
            margin_plus = sum(X[n, k] * (plus[k, j] - plus[k, y[n]]) for k in range(W.shape[0]))
            margin_minus = sum(X[n, k] * (minus[k, j] - minus[k, y[n]]) for k in range(W.shape[0]))
            if (margin_plus + delta > 0) != (margin_minus + delta > 0):
                flips.add((n, j))
    return flips


@pytest.mark.parametrize("seed", range(6))
def test_straddle_detection_agrees_with_brute_force(seed):
    # delta = 0 near W = 0 puts many margins near their kink.
    W, X, y = batch(n=40, d=6, c=4, seed=seed, scale=1e-6)
    h = 1e-5
    for d, c in draw_coordinates(W.shape, 8, np.random.default_rng(seed)):
        rows, cols = straddling(W, X, y, 0.0, d, c, h)
        found = set(zip(rows.tolist(), cols.tolist(), strict=True))
        expected = brute_force_flips(W, X, y, 0.0, d, c, h)
        assert found == expected
        assert found  # at this point every coordinate straddles something


def test_straddle_detection_matches_recount_exactly():
    W, X, y = batch(n=50, d=5, c=3, seed=9, scale=1e-6)
    h = 1e-5
    for d, c in [(0, 0), (1, 2), (4, 1)]:
        rows, cols = straddling(W, X, y, 0.0, d, c, h)
        plus, minus = W.copy(), W.copy()
        plus[d, c] += h
        minus[d, c] -= h
        recount = active(margins(X @ plus, y, 0.0)) != active(margins(X @ minus, y, 0.0))
        assert set(zip(rows, cols, strict=True)) == set(zip(*np.nonzero(recount), strict=True))


def test_delta_zero_near_zero_weights_has_many_near_kink_margins():
    W, X, y = batch(n=200, d=20, c=10, scale=1e-8)
    distance = 1e-5 * np.abs(X).max()
    near0 = near_kink_fraction(margins(X @ W, y, 0.0), distance)
    near1 = near_kink_fraction(margins(X @ W, y, 1.0), distance)
    assert near0 > 0.5
    assert near1 == 0.0


def test_sweep_shows_fewer_kinks_with_larger_delta():
    W, X, y = batch(n=100, d=10, c=5, scale=1e-7)
    rows = sweep_delta(W, X, y, [0.0, 1.0, 10.0])
    assert rows[0].near_kink_fraction > rows[1].near_kink_fraction >= rows[2].near_kink_fraction
    assert rows[0].straddled_fraction == 1.0 and rows[0].straddled == rows[0].coordinates == 50
    assert rows[2].straddled_fraction == 0.0 and rows[2].straddled == 0


@pytest.mark.parametrize("seed", range(6))
def test_exact_straddle_count_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, d, c = 15, 6, 4
    X = rng.standard_normal((n, d))
    X[:, -1] = 1.0
    X[0, 2] = 0.0  # a zero feature moves nothing
    y = rng.integers(0, c, n)
    W = 0.3 * rng.standard_normal((d, c))
    h = 0.05  # large, so that many coordinates straddle and many do not
    counts = []
    for delta in (0.0, 0.1, 1.0):
        exact = straddle_map(W, X, y, delta, h)
        brute = np.array(
            [[straddling(W, X, y, delta, i, j, h)[0].size > 0 for j in range(c)] for i in range(d)]
        )
        assert np.array_equal(exact, brute), (delta, exact, brute)
        counts.append(int(brute.sum()))
        (row,) = sweep_delta(W, X, y, [delta], h)
        assert row.straddled == int(brute.sum()) and row.coordinates == d * c
    assert any(0 < k < d * c for k in counts), counts  # the test has cases of both kinds
    # W = 0 and delta = 0: every margin sits on its kink; only a zero x moves nothing.
    X[:, 2] = 0.0
    exact = straddle_map(np.zeros((d, c)), X, y, 0.0, 1e-3)
    assert not exact[2].any() and exact[[0, 1, 3, 4, 5]].all()


def test_degenerate_point_every_sample_straddles():
    W, X, y = batch(n=10, d=4, c=3, scale=0.0)
    report = gradcheck(W, X, y, [(0, 0), (1, 2)], delta=0.0)
    assert all(c.status == "kink" and c.kink_free_rel_error is None for c in report.checks)


def test_bad_arguments():
    W, X, y = batch()
    with pytest.raises(ValueError, match="h must be > 0"):
        gradcheck(W, X, y, [(0, 0)], h=-1.0)
    with pytest.raises(ValueError, match=r"coordinate \(99, 0\) is outside W"):
        gradcheck(W, X, y, [(99, 0)])


def test_svm_loss_is_the_default():
    W, X, y = batch()
    report = gradcheck(W, X, y, [(0, 0)], reg=0.0)
    assert report.loss == pytest.approx(svm_loss(W, X, y, 0.0)[0])
