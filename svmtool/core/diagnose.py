"""Which known mistake reproduces a user's loss and gradient (pure numpy, no IO).

A student's ``svm_loss(W, X, y, reg)`` is held against the multi-class hinge
loss. The loss and the gradient are read separately: each is matched against
every combination of the known ways to get one of its terms wrong, and the
combination with the fewest mistakes that reproduces the user's number wins.

Both are built from the same four terms::

    loss = data_loss / size + a * reg * sum(W_r * W_r)
    dW   = data_grad / size + b * reg * W_r

where W_r is W, or W without its bias row. The right answers are a = 1, b = 2
(``reg * sum(W*W)``, CS231n's) and a = 0.5, b = 1 (``0.5 * reg * sum(W*W)``);
every other choice of a term is a row of the tables below. A new known mistake
is one more row (and, for a new data term, one more function).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from svmtool.core.loss import active, margins

MATCH_RTOLS = (1e-9, 1e-6)
"""How close a user's number must be to a candidate's to be called the same,
tried in turn: loops and vectorized code agree to ~1e-13, and at a small W a
subtle mistake (the bias row left out of the loss's regularization) moves the
loss by only ~1e-7, so 1e-9 comes first; 1e-6 then forgives code that works in
float32 internally."""
MATCH_RTOL = MATCH_RTOLS[-1]
FLOAT32_RTOL = 1e-4
"""For code that computes in float32: its sums of hundreds of terms carry ~1e-5."""

MAX_MISTAKES = 2
"""A reading names at most this many mistakes at once; more is guesswork."""


@dataclass(frozen=True)
class Term:
    """One way of computing one term of the loss or the gradient."""

    key: str  # stable id, used in --json
    text: str  # what the code does, said to the user; "" for the right way
    value: object  # what the term computes with (a scale name, a coefficient, a flag)

    @property
    def is_mistake(self) -> bool:
        return bool(self.text)


# --- the data terms: (N,) margins -> summed data loss / data gradient, not yet averaged ---


def _loss_hinge(W, X, y, delta):
    return float(np.maximum(margins(X @ W, y, delta), 0).sum())


def _loss_correct_counted(W, X, y, delta):
    # The loop over j also visits j = y_n, whose margin is exactly delta.
    return _loss_hinge(W, X, y, delta) + len(y) * max(delta, 0.0)


def _loss_delta_outside(W, X, y, delta):
    # sum_j (max(0, s_j - s_y) + delta): every wrong class adds delta.
    m = margins(X @ W, y, 0.0)
    return float(np.maximum(m, 0).sum()) + len(y) * (W.shape[1] - 1) * delta


def _grad_from_beta(X, y, beta, correct_extra=0.0, correct_term=True):
    coeff = beta.astype(X.dtype)
    rows = np.arange(len(y))
    coeff[rows, y] = -(coeff.sum(axis=1) + correct_extra) if correct_term else 0.0
    return X.T @ coeff


def _grad_hinge(W, X, y, delta):
    return _grad_from_beta(X, y, active(margins(X @ W, y, delta)))


def _grad_correct_counted(W, X, y, delta):
    # The correct class's own margin (= delta > 0) counted as active: its
    # column gets one x_n too many subtracted.
    return _grad_from_beta(X, y, active(margins(X @ W, y, delta)), correct_extra=1.0)


def _grad_no_correct_term(W, X, y, delta):
    return _grad_from_beta(X, y, active(margins(X @ W, y, delta)), correct_term=False)


def _grad_delta_outside(W, X, y, delta):
    # Active when s_j - s_y > 0: the condition lost its delta.
    return _grad_from_beta(X, y, active(margins(X @ W, y, 0.0)))


def _grad_all_active(W, X, y, delta):
    # max(0, .) + delta is always > 0, so every wrong class counts.
    beta = np.ones((len(y), W.shape[1]), dtype=bool)
    beta[np.arange(len(y)), y] = False
    return _grad_from_beta(X, y, beta)


def _grad_sign_flipped(W, X, y, delta):
    return -_grad_hinge(W, X, y, delta)


def _grad_all_active_correct_counted(W, X, y, delta):
    # binary = margins >= 0 after np.maximum: every entry, the correct class's too.
    beta = np.ones((len(y), W.shape[1]), dtype=bool)
    beta[np.arange(len(y)), y] = False
    return _grad_from_beta(X, y, beta, correct_extra=1.0)


def _grad_margin_values(W, X, y, delta):
    # dW = X.T.dot(margins): the margins' values where a 0/1 mask belongs.
    m = np.maximum(margins(X @ W, y, delta), 0)
    coeff = m.copy()
    coeff[np.arange(len(y)), y] = -m.sum(axis=1)
    return X.T @ coeff


OTHER_DELTAS = (0.0, 0.1, 0.5, 2.0, 5.0, 10.0, 100.0)
"""Margins students hard-code by mistake (delta fixed inside the function)."""


def _with_delta(fn, d: float):
    return lambda W, X, y, delta: fn(W, X, y, d)


DataFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float], object]

LOSS_DATA: list[tuple[Term, DataFn]] = [
    (Term("hinge", "", "hinge"), _loss_hinge),
    (
        Term(
            "correct-class-counted",
            "the correct class's own margin is counted (it is always delta, so the loss"
            " gains delta per sample)",
            "correct",
        ),
        _loss_correct_counted,
    ),
    (
        Term(
            "delta-outside-max",
            "delta is added outside the max: max(0, s_j - s_y) + delta instead of"
            " max(0, s_j - s_y + delta)",
            "outside",
        ),
        _loss_delta_outside,
    ),
]

GRAD_DATA: list[tuple[Term, DataFn]] = [
    (Term("hinge", "", "hinge"), _grad_hinge),
    (
        Term(
            "no-correct-class-term",
            "the correct class's column lacks its -x_n term (dW[:, y[i]] -= X[i] for each"
            " positive margin)",
            "no-correct",
        ),
        _grad_no_correct_term,
    ),
    (
        Term(
            "correct-class-counted",
            "the correct class is counted among the positive margins, so its column gets"
            " x_n subtracted once too often",
            "correct",
        ),
        _grad_correct_counted,
    ),
    (
        Term(
            "delta-outside-max",
            "a margin counts as positive when s_j - s_y > 0: delta is missing from the"
            " condition (delta outside the max)",
            "outside",
        ),
        _grad_delta_outside,
    ),
    (
        Term(
            "all-margins-active",
            "every wrong class counts as a positive margin (the test is always true:"
            " margins >= 0 after np.maximum, or max(0, .) + delta > 0)",
            "all",
        ),
        _grad_all_active,
    ),
    (
        Term("sign-flipped", "the data gradient has the wrong sign (+= and -= swapped)", "flip"),
        _grad_sign_flipped,
    ),
    (
        Term(
            "all-active-correct-counted",
            "every margin counts as active, the correct class's too (a mask such as"
            " margins >= 0 after np.maximum is always true)",
            "all-correct",
        ),
        _grad_all_active_correct_counted,
    ),
    (
        Term(
            "margin-values",
            "the gradient weighs each sample by its margin's value where a 0/1 mask"
            " belongs (X.T.dot(margins) instead of X.T.dot(margins > 0))",
            "values",
        ),
        _grad_margin_values,
    ),
]


def _delta_rows(base: DataFn) -> list[tuple[Term, DataFn]]:
    return [
        (
            Term(
                f"delta-{d:g}",
                f"the margin uses delta = {d:g} (hard-coded?), not the delta it was checked at",
                d,
            ),
            _with_delta(base, d),
        )
        for d in OTHER_DELTAS
    ]


LOSS_DATA += _delta_rows(_loss_hinge)
GRAD_DATA += _delta_rows(_grad_hinge)

SIZES = [
    Term("mean", "", "N"),
    Term("not-averaged", "{data} is not divided by N (the number of samples)", "1"),
    Term("divided-by-D", "{data} is divided by D = X.shape[1] instead of N = X.shape[0]", "D"),
    Term("divided-by-C", "{data} is divided by C (the number of classes) instead of N", "C"),
    Term(
        "divided-by-NC",
        "{data} is divided by N * C (PyTorch's MultiMarginLoss convention) instead of N",
        "NC",
    ),
    Term("divided-twice", "{data} is divided by N twice", "NN"),
]

# Coefficient a of reg * sum(W*W) in the loss, b of reg * W in the gradient.
# Whether a and b fit each other is judged afterwards (see ``reg_verdict``):
# b = 2a is right, whatever a is, as long as a is one of the two conventions.
LOSS_REG = [
    Term("reg", "", 1.0),
    Term("half-reg", "", 0.5),
    Term("no-reg", "the loss has no regularization term", 0.0),
    Term("double-reg", "the loss's regularization is 2 * reg * sum(W*W)", 2.0),
    Term(
        "reg-divided-by-N",
        "the loss's regularization is divided by N too (added before the division by N)",
        "1/N",
    ),
]
GRAD_REG = [
    Term("reg", "", 2.0),
    Term("half-reg", "", 1.0),
    Term("no-reg", "the gradient has no regularization term", 0.0),
    Term("double-reg", "the gradient's regularization is 4 * reg * W", 4.0),
    Term("quarter-reg", "the gradient's regularization is 0.5 * reg * W", 0.5),
    Term(
        "reg-divided-by-N",
        "the gradient's regularization is divided by N too (added before the division by N)",
        "2/N",
    ),
]
BIAS = [
    Term("bias-regularized", "", True),
    Term(
        "bias-not-regularized",
        "{whole} leaves the bias row (the last row of W) out of the regularization",
        False,
    ),
]


def _size(term: Term, X: np.ndarray, W: np.ndarray) -> float:
    n, d = X.shape
    c = W.shape[1]
    return {"N": n, "1": 1, "D": d, "C": c, "NC": n * c, "NN": n * n}[term.value]  # type: ignore[index]


def coefficient(term: Term, n: int) -> float:
    """A regularization term's coefficient; '1/N' and '2/N' scale with the batch."""
    if isinstance(term.value, str):
        top, _, _ = term.value.partition("/")
        return float(top) / n
    return float(term.value)  # type: ignore[arg-type]


@dataclass
class Reading:
    """What a user's loss (or gradient) was found to compute."""

    part: str  # "loss" or "gradient"
    data: Term
    size: Term
    reg: Term
    bias: Term
    value: object  # the candidate's value (float, or (D, C) array)
    difference: float  # relative difference between the user's value and this candidate

    @property
    def mistakes(self) -> list[str]:
        """What this reading says is wrong, in words (regularization coefficients are
        judged together with the other part, by ``reg_verdict``)."""
        out = []
        for term in (self.data, self.size, self.bias):
            if term.is_mistake:
                data, whole = f"the {self.part}'s data term", f"the {self.part}"
                out.append(term.text.format(data=data, whole=whole))
        return out

    @property
    def formula(self) -> str:
        """What the reading computes, e.g. 'hinge / N + 1 * reg * sum(W*W)'."""
        size = {"N": "N", "1": "1", "D": "D", "C": "C", "NC": "(N*C)", "NN": "N^2"}[self.size.value]
        weights = "W" if self.bias.value else "W without its bias row"
        coef = self.reg.value if isinstance(self.reg.value, str) else f"{self.reg.value:g}"
        if self.part == "loss":
            return f"{self.data.key} / {size} + {coef} * reg * sum({weights}^2)"
        return f"{self.data.key} gradient / {size} + {coef} * reg * {weights}"

    @property
    def keys(self) -> list[str]:
        return [t.key for t in (self.data, self.size, self.reg, self.bias) if t.is_mistake]


def _relative(a, b) -> float:
    """Largest elementwise |a - b| over the largest |b| (scalars too)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max(initial=0.0)), float(np.abs(a).max(initial=0.0)), 1e-300)
    return float(np.abs(a - b).max(initial=0.0)) / scale


def _candidates(part, data_terms, reg_terms, W, X, y, reg, delta, prefer=()):
    """Every combination of terms with at most MAX_MISTAKES mistakes, fewest first;
    among equals, those sharing more of the ``prefer`` keys (the other part's
    reading: a hard-coded delta seen in the loss explains the gradient too)."""
    W_nobias = W.copy()
    W_nobias[-1] = 0.0
    data_values = [(t, fn(W, X, y, delta)) for t, fn in data_terms]
    combos = []
    for (dt, dv), st, rt, bt in itertools.product(data_values, SIZES, reg_terms, BIAS):
        count = sum(t.is_mistake for t in (dt, st, rt, bt))
        # Without regularization the reg and bias terms cannot be seen: don't guess.
        if count > MAX_MISTAKES or (reg == 0 and (rt.is_mistake or bt.is_mistake)):
            continue
        combos.append((count, dt, dv, st, rt, bt))
    # Stable: then the tables' order breaks ties.
    combos.sort(key=lambda c: (c[0], -sum(t.key in prefer for t in (c[1], c[3], c[5]))))
    for _, dt, dv, st, rt, bt in combos:
        Wr = W if bt.value else W_nobias
        size = _size(st, X, W)
        coef = coefficient(rt, X.shape[0])
        if part == "loss":
            value = float(dv) / size + coef * reg * float(np.vdot(Wr, Wr))
        else:
            value = dv / size + (coef * reg) * Wr
        yield dt, st, rt, bt, value


def read_part(
    part: str,
    user_value,
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    delta: float,
    single: bool = False,
    prefer: tuple[str, ...] = (),
) -> Reading | None:
    """The simplest combination of terms that reproduces ``user_value``, or None.
    ``single``: the user computed in float32, so float32 rounding is forgiven."""
    data_terms, reg_terms = (LOSS_DATA, LOSS_REG) if part == "loss" else (GRAD_DATA, GRAD_REG)
    # Built lazily: right code (and most mistakes) match within the first few
    # candidates; the looser passes reuse what the first one built.
    fresh = _candidates(part, data_terms, reg_terms, W, X, y, reg, delta, prefer)
    seen: list = []
    for i, rtol in enumerate(MATCH_RTOLS + ((FLOAT32_RTOL,) if single else ())):
        for dt, st, rt, bt, value in seen if i else _remember(fresh, seen):
            diff = _relative(user_value, value)
            if diff <= rtol:
                return Reading(part, dt, st, rt, bt, value, diff)
        if i == 0:
            seen.extend(fresh)  # the rest, for the looser passes
    return None


def _remember(items, into: list):
    for item in items:
        into.append(item)
        yield item


def reference(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float, delta: float, half: bool = False
) -> tuple[float, np.ndarray]:
    """The right loss and gradient under ``reg*sum(W*W)`` or, with ``half``, ``0.5*reg*...``."""
    a = 0.5 if half else 1.0
    n = X.shape[0]
    loss = _loss_hinge(W, X, y, delta) / n + a * reg * float(np.vdot(W, W))
    return loss, _grad_hinge(W, X, y, delta) / n + (2 * a * reg) * W


CONVENTIONS = {
    1.0: "reg * sum(W*W) (gradient 2 * reg * W)",
    0.5: "0.5 * reg * sum(W*W) (gradient reg * W)",
}


def reg_verdict(loss: Reading | None, grad: Reading | None, reg: float) -> tuple[str | None, str]:
    """Judge the two regularization coefficients together.

    Returns ``(mistake, convention)``: the mistake in words (None when they fit)
    and the convention the code follows as far as it can be told.
    """
    if reg == 0:
        return None, "cannot be told at reg = 0"
    scaled = [r.reg.text for r in (loss, grad) if r is not None and isinstance(r.reg.value, str)]
    if scaled:
        return "; ".join(scaled), "mixed"
    a = loss.reg.value if loss else None
    b = grad.reg.value if grad else None
    if a is None or b is None:
        known = a if a is not None else (b / 2 if b is not None else None)
        return None, CONVENTIONS.get(known, "unknown")  # type: ignore[arg-type]
    if a in CONVENTIONS and b == 2 * a:
        return None, CONVENTIONS[a]
    if a == 1.0 and b == 1.0:
        return (
            "the factor 2 is missing from the regularization gradient: the loss has"
            " reg * sum(W*W), whose gradient is 2 * reg * W, but the code adds reg * W",
            "mixed",
        )
    if a == 0.5 and b == 2.0:
        return (
            "the loss has 0.5 * reg * sum(W*W), whose gradient is reg * W, but the code adds"
            " 2 * reg * W",
            "mixed",
        )
    if a > 0 and b == 0:
        return "no regularization term in the gradient (the loss has one)", "mixed"
    if a == 0 and b > 0:
        return "regularization in the gradient but not in the loss", "mixed"
    if a == 0 and b == 0:
        return "reg is not used: neither the loss nor the gradient is regularized", "none"
    return (
        f"the regularization gradient does not fit the loss: the loss has {a:g} * reg *"
        f" sum(W*W), whose gradient is {2 * a:g} * reg * W, but the code adds {b:g} * reg * W",
        "mixed",
    )


@dataclass
class Difference:
    """Where a gradient differs from the reference, for mistakes no row explains."""

    relative: float  # Frobenius norm of the difference over that of the reference
    ratio: float | None  # user's dW = ratio * reference, when it is a multiple of it
    columns: list[tuple[int, float]]  # (class, max |difference|), largest first
    rows: list[tuple[int, float]]  # (row of W, max |difference|), largest first
    rows_differing: int
    bias_row_differs: bool


def where_differs(user_dW: np.ndarray, ref_dW: np.ndarray, top: int = 5) -> Difference:
    """Which rows and columns of dW differ from the reference, and by how much."""
    diff = np.abs(np.asarray(user_dW, dtype=np.float64) - ref_dW)
    noise = MATCH_RTOL * max(float(np.abs(ref_dW).max(initial=0.0)), 1e-300)
    by_col = diff.max(axis=0)
    by_row = diff.max(axis=1)
    cols = [(int(c), float(by_col[c])) for c in np.argsort(-by_col) if by_col[c] > noise]
    rows = [(int(r), float(by_row[r])) for r in np.argsort(-by_row)[:top] if by_row[r] > noise]
    user = np.asarray(user_dW, dtype=np.float64)
    scale = float(np.vdot(ref_dW, ref_dW))
    ratio = float(np.vdot(user, ref_dW)) / scale if scale > 0 else None
    if ratio is not None and _relative(user, ratio * ref_dW) > MATCH_RTOL:
        ratio = None
    return Difference(
        relative=float(np.linalg.norm(diff) / max(np.linalg.norm(ref_dW), 1e-300)),
        ratio=ratio,
        columns=cols,
        rows=rows,
        rows_differing=int((by_row > noise).sum()),
        bias_row_differs=bool(by_row[-1] > noise),
    )


@dataclass
class Diagnosis:
    """The user's loss and gradient held against the hinge loss at one point."""

    reg: float
    delta: float
    user_loss: float
    reference_loss: float  # under the convention closest to the user's
    loss_reading: Reading | None
    grad_reading: Reading | None
    convention: str
    reg_mistake: str | None
    stub: str | None  # "not implemented yet?" cases
    gradient_difference: Difference | None  # when no row explains the gradient
    rows: int = 0  # rows of W
    mistakes: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return not self.mistakes and self.loss_reading is not None and bool(self.grad_reading)


def diagnose(
    user_loss: float,
    user_dW: np.ndarray,
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    delta: float,
    single: bool = False,
) -> Diagnosis:
    """Name what the user's ``(loss, dW)`` at (W, X, y, reg) computes.

    W: (D, C); X: (N, D); y: (N,). float64 throughout. ``single``: the user's
    code works in float32 (its rounding is then forgiven).
    """
    user_dW = np.asarray(user_dW, dtype=np.float64)
    stub = None
    loss_zero = user_loss == 0.0
    grad_zero = not np.any(user_dW)
    if loss_zero and grad_zero:
        stub = "the loss is 0 and the gradient all zeros: not implemented yet?"
    elif grad_zero:
        stub = (
            "the gradient is all zeros: not implemented yet? (the starter code's"
            " dW = np.zeros(W.shape))"
        )
    elif loss_zero:
        stub = "the loss is 0: not implemented yet? (the starter code's loss = 0.0)"
    loss_reading = None if loss_zero else read_part("loss", user_loss, W, X, y, reg, delta, single)
    prefer = () if loss_reading is None else tuple(loss_reading.keys)
    grad_reading = (
        None if grad_zero else read_part("gradient", user_dW, W, X, y, reg, delta, single, prefer)
    )
    reg_mistake, convention = reg_verdict(loss_reading, grad_reading, reg)
    half = convention.startswith("0.5")
    ref_loss, ref_dW = reference(W, X, y, reg, delta, half=half)

    mistakes: list[str] = []
    keys: list[str] = []
    if stub:
        mistakes.append(stub)
        keys.append("not-implemented")
    for reading, part in ((loss_reading, "loss"), (grad_reading, "gradient")):
        if reading is not None:
            mistakes += reading.mistakes
            keys += [f"{part}:{k}" for k in reading.keys]
        elif not (part == "loss" and loss_zero) and not (part == "gradient" and grad_zero):
            mistakes.append(f"the {part} matches no known mistake")
            keys.append(f"{part}:unknown")
    if reg_mistake:
        mistakes.append(reg_mistake)
    difference = None
    if grad_reading is None and not grad_zero:
        difference = where_differs(user_dW, ref_dW)
    return Diagnosis(
        reg=reg,
        delta=delta,
        user_loss=float(user_loss),
        reference_loss=ref_loss,
        loss_reading=loss_reading,
        grad_reading=grad_reading,
        convention=convention,
        reg_mistake=reg_mistake,
        stub=stub,
        gradient_difference=difference,
        rows=W.shape[0],
        mistakes=mistakes,
        keys=sorted(set(keys), key=keys.index),
    )
