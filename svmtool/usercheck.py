"""Check a user's own SVM loss function: is its gradient right, and if not, what is wrong.

Four questions, each answered from the user's own numbers:

1. Self-consistency: does its gradient match centered differences of its own
   loss (kinks explained, as ``svmtool gradcheck`` does for svmtool's loss)?
2. Agreement: does it compute the multi-class hinge loss, under which
   regularization convention, and if not, which known mistake reproduces it?
3. Probes: does it still agree at other shapes (C = 7, N < D and N > D), where
   code that works by accident (a hard-coded 10, an array sized by the wrong
   dimension) breaks?
4. Hygiene: did it change its inputs in place; does it return ``(number, dW)``?

This module runs the user's function; it neither prints nor reads files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from svmtool.core.diagnose import Diagnosis, diagnose
from svmtool.core.gradcheck import DEFAULT_TOL, GradcheckReport, draw_coordinates, gradcheck
from svmtool.errors import SvmtoolError
from svmtool.io.usercode import BadReturn, UserCodeError, UserFunction

DEFAULT_REGS = (0.0, 5e1)
"""As CS231n's notebook: reg = 0, then 5e1, where a wrong regularization
gradient becomes visible."""

PROBE_SHAPES = ((12, 30, 7), (60, 30, 7))
"""(N, D, C) of the probes: 7 classes, N below and above D."""

EXIT_RIGHT, EXIT_WRONG, EXIT_ERROR = 0, 1, 3


@dataclass
class RegCheck:
    """The user's function at one value of reg."""

    reg: float
    loss: float | None = None
    diagnosis: Diagnosis | None = None
    gradcheck: GradcheckReport | None = None
    problem: str | None = None  # the self-consistency check could not finish


@dataclass
class Probe:
    """The user's function at another shape, held against the reference."""

    n: int
    d: int
    c: int
    status: str  # "ok", "disagrees", "crashed", "bad return"
    detail: str = ""
    traceback: str = ""

    @property
    def label(self) -> str:
        relation = "<" if self.n < self.d else ">"
        return f"C={self.c}, N={self.n} {relation} D={self.d}"


@dataclass
class FunctionReport:
    """Everything found about one user function."""

    name: str
    origin: str
    takes_delta: bool
    delta: float  # the delta the function was checked at
    delta_note: str | None
    regs: list[RegCheck] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    mutated: list[str] = field(default_factory=list)
    bad_return: str | None = None
    error: UserCodeError | None = None
    findings: list[str] = field(default_factory=list)
    convention: str = "cannot be told at reg = 0"
    float32: bool = False  # it computes in float32
    patched: list[str] = field(default_factory=list)  # numpy names it replaced (put back)

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "error"
        return "wrong" if self.findings else "right"

    @property
    def exit_code(self) -> int:
        return {"right": EXIT_RIGHT, "wrong": EXIT_WRONG, "error": EXIT_ERROR}[self.verdict]


@dataclass
class Comparison:
    """CS231n's notebook check: the naive and the vectorized function on the same batch."""

    first: str
    second: str
    reg: float
    loss_difference: float
    gradient_difference: float  # Frobenius norm of the difference
    first_seconds: float
    second_seconds: float

    @property
    def speedup(self) -> float:
        return self.first_seconds / max(self.second_seconds, 1e-12)


@dataclass
class UserCheckReport:
    """The report of ``svmtool gradcheck --loss`` and ``svmtool.check_gradient``.

    ``print(report)`` shows it as the command line does.
    """

    functions: list[FunctionReport]
    comparison: Comparison | None
    samples: int
    shape: tuple[int, int]  # W's
    source: str
    point: str
    h: float
    tol: float

    @property
    def exit_code(self) -> int:
        return max((f.exit_code for f in self.functions), default=EXIT_RIGHT)

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_RIGHT

    def __str__(self) -> str:
        from svmtool.render.usercheck import render_to_text

        return render_to_text(self)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython / Jupyter
        printer.text(str(self))


def layout_hint(fn: UserFunction, W, X, y, reg: float, delta: float) -> str | None:
    """If the function works when W is C x D and X is D x N (the 2015 assignment's
    layout) the error is that, not a bug in the math."""
    try:
        result = fn.raw_call(W.T.copy(), X.T.copy(), y.copy(), reg, delta)
        dW = result[1]
        if getattr(dW, "shape", None) == W.T.shape:
            return (
                "the code expects the 2015 layout (W: C x D, X: D x N); today's CS231n"
                f" passes W as D x C {W.shape} and X as N x D {X.shape}"
            )
    except KeyboardInterrupt:
        raise
    except BaseException:  # their code, any way it fails (sys.exit included)
        return None
    return None


def _probe_batch(n: int, d: int, c: int, rng: np.random.Generator):
    X = rng.standard_normal((n, d))
    X[:, -1] = 1.0
    y = rng.permutation(np.arange(n) % c)
    # Scores of spread ~1.4: about half the margins are active at delta = 1,
    # so code that treats every margin as active is told apart.
    W = rng.standard_normal((d, c)) / np.sqrt(d)
    return W, X, y


def run_probes(
    fn: UserFunction, reg: float, delta: float, main_keys: list[str], seed: int
) -> list[Probe]:
    """Call the function at each of PROBE_SHAPES and hold it against the reference."""
    rng = np.random.default_rng(seed)
    probes = []
    for n, d, c in PROBE_SHAPES:
        W, X, y = _probe_batch(n, d, c, rng)
        try:
            loss, dW = fn(W, X, y, reg, delta)
        except UserCodeError as exc:
            probes.append(Probe(n, d, c, "crashed", exc.summary, exc.details))
            continue
        except BadReturn as exc:
            probes.append(Probe(n, d, c, "bad return", str(exc)))
            continue
        diag = diagnose(loss, dW, W, X, y, reg, delta)
        if diag.correct:
            probes.append(Probe(n, d, c, "ok"))
        elif diag.keys == main_keys:
            probes.append(Probe(n, d, c, "disagrees", "the same mistakes as at the main point"))
        else:
            probes.append(Probe(n, d, c, "disagrees", "; ".join(diag.mistakes)))
    return probes


def _self_consistency(
    fn: UserFunction, W, X, y, reg, delta, coords, h, tol
) -> tuple[GradcheckReport | None, str | None]:
    try:
        return gradcheck(W, X, y, coords, reg=reg, delta=delta, h=h, tol=tol, loss_fn=fn), None
    except (UserCodeError, BadReturn) as exc:
        what = exc.summary if isinstance(exc, UserCodeError) else str(exc)
        if fn.last_rows != X.shape[0]:
            return None, (
                f"called on {fn.last_rows} of the {X.shape[0]} samples (the recheck of a kink"
                f" leaves out the samples that straddle it), {what.replace(' raised:', ' raised')}"
                " — is the number of samples hard-coded?"
            )
        return None, f"the check could not finish: {what}"


def check_function(
    fn: UserFunction,
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    regs: Sequence[float],
    delta: float,
    coords: Sequence[tuple[int, int]],
    h: float,
    tol: float,
    seed: int,
    probes: bool = True,
) -> FunctionReport:
    """All four checks of one function at (W, X, y); W: (D, C), X: (N, D), y: (N,)."""
    used = delta if fn.takes_delta else 1.0
    note = None
    if not fn.takes_delta:
        note = f"{fn.name} takes no delta, so it is checked at delta = 1 (CS231n fixes it inside)"
        if delta != 1.0:
            note += f"; --delta {delta:g} is not used"
    report = FunctionReport(fn.name, fn.origin, fn.takes_delta, used, note)
    for i, reg in enumerate(regs):
        check = RegCheck(reg)
        report.regs.append(check)
        try:
            loss, dW = fn(W, X, y, reg, used)
        except UserCodeError as exc:
            # It raised at the point of the check itself: nothing can be judged there.
            if i == 0:
                exc.hint = exc.hint or layout_hint(fn, W, X, y, reg, used)
            else:
                exc.summary = exc.summary.replace(" raised:", f" raised at reg = {reg:g}:", 1)
            report.error = exc
            report.regs.pop()
            return report
        except BadReturn as exc:
            report.bad_return = str(exc)
            report.findings.append(str(exc))
            return report
        check.loss = loss
        check.diagnosis = diagnose(loss, dW, W, X, y, reg, used, single=fn.float32)
        check.gradcheck, check.problem = _self_consistency(fn, W, X, y, reg, used, coords, h, tol)
    report.mutated = sorted(fn.mutated, key="WXy".index)
    report.float32 = fn.float32
    report.patched = list(fn.patched)
    _collect_findings(report)
    if probes and report.regs[-1].diagnosis is not None:
        last = report.regs[-1]
        report.probes = run_probes(fn, last.reg, used, last.diagnosis.keys, seed)
        broken = [p for p in report.probes if p.status != "ok"]
        if broken and all(c.diagnosis and c.diagnosis.correct for c in report.regs):
            n, c = X.shape[0], W.shape[1]
            report.findings.append(
                "right at this shape but not at "
                + " or ".join(p.label for p in broken)
                + f": code that works by accident (a hard-coded number of samples, N = {n}"
                f" here, or of classes, C = {c} here, or an array sized by the wrong"
                " dimension?)"
            )
        elif any(p.status in ("crashed", "bad return") for p in broken):
            report.findings.append(
                "it fails at another shape: " + "; ".join(f"{p.label}: {p.detail}" for p in broken)
            )
    return report


def _collect_findings(report: FunctionReport) -> None:
    """Turn the per-reg results into the function's findings, each said once."""
    seen: dict[str, list[float]] = {}
    for check in report.regs:
        if check.diagnosis is not None:
            for mistake in check.diagnosis.mistakes:
                regs = seen.setdefault(mistake, [])
                if check.reg not in regs:  # the loss and the gradient may say the same
                    regs.append(check.reg)
            if check.reg != 0:
                report.convention = check.diagnosis.convention
        if check.gradcheck is not None:
            fails = [c for c in check.gradcheck.checks if c.status == "FAIL"]
            if fails:
                text = (
                    f"its gradient disagrees with its own loss at {len(fails)} of"
                    f" {len(check.gradcheck.checks)} coordinates"
                )
                seen.setdefault(text, []).append(check.reg)
        if check.problem and check.gradcheck is None:
            seen.setdefault(f"self-consistency: {check.problem}", []).append(check.reg)
    for text, regs in seen.items():
        where = ", ".join(f"{r:g}" for r in regs)
        report.findings.append(f"{text} (reg = {where})")
    checked = [c for c in report.regs if c.gradcheck is not None and c.diagnosis is not None]
    consistent = all(
        ch.status != "FAIL"
        for c in checked
        for ch in c.gradcheck.checks  # type: ignore[union-attr]
    )
    loss_right = all(
        c.diagnosis.loss_reading is not None and not c.diagnosis.loss_reading.mistakes
        for c in checked  # type: ignore[union-attr]
    )
    stub = any(c.diagnosis.stub for c in checked)  # type: ignore[union-attr]
    if checked and report.findings and not stub:
        # (A stub's zeros agree with its zero loss: nothing to say about a formula.)
        if consistent and not all(c.diagnosis.correct for c in checked):  # type: ignore[union-attr]
            report.findings.append(
                "its gradient agrees with its own loss: the mistake is in the formula both"
                " compute, not in the differentiation"
            )
        elif loss_right and not consistent:
            report.findings.append("its loss is right: the mistake is in the gradient")
    if report.float32:
        report.findings.insert(
            0,
            "it computes in float32 (its results are float32): a gradient check needs float64,"
            " because float32 rounding of the loss, divided by 2h, swamps the comparison"
            " (remove the astype(np.float32))",
        )
    if report.patched:
        names = ", ".join(report.patched[:5]) + (" ..." if len(report.patched) > 5 else "")
        report.findings.append(
            f"its file or the function replaces {names} (as in np.maximum = np.minimum):"
            " that changes numpy for all code run after it; svmtool put the original back"
            " after each call, so nothing else was judged with the replacement"
        )
    if report.mutated:
        names = " and ".join(report.mutated)
        report.findings.append(
            f"it changes {names} in place: that corrupts the caller's"
            f" {'weights' if 'W' in report.mutated else 'data'} (work on a copy)"
        )


def compare_functions(
    first: UserFunction, second: UserFunction, W, X, y, reg: float, delta: float, repeats: int = 3
) -> Comparison | None:
    """The notebook's naive-vs-vectorized comparison (median of ``repeats`` calls each)."""

    def timed(fn: UserFunction):
        # The user's function alone is timed: the copies it gets are made before.
        times = []
        for _ in range(repeats):
            args = (W.copy(), X.copy(), y.copy())
            t0 = time.perf_counter()
            fn.raw_call(*args, reg, delta)
            times.append(time.perf_counter() - t0)
        return fn(W, X, y, reg, delta), float(np.median(times))

    try:
        (l1, g1), t1 = timed(first)
        (l2, g2), t2 = timed(second)
    except (UserCodeError, BadReturn):
        return None
    except KeyboardInterrupt:
        raise
    except BaseException:  # raw_call is unchecked; the checked calls say what failed
        return None
    return Comparison(
        first.name, second.name, reg, abs(l1 - l2), float(np.linalg.norm(g1 - g2, "fro")), t1, t2
    )


def run_check(
    functions: Sequence[UserFunction],
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    regs: Sequence[float] = DEFAULT_REGS,
    delta: float = 1.0,
    coords: Sequence[tuple[int, int]] | None = None,
    checks: int = 10,
    h: float = 1e-5,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    probes: bool = True,
    source: str = "arrays",
    point: str = "the given W",
    on_function: Callable[[FunctionReport], None] | None = None,
) -> UserCheckReport:
    """Check each function at (W, X, y); compare the first two when there are two.
    ``on_function`` is told each function's report as soon as it is done."""
    W, X, y = _validated(W, X, y)
    if not (h > 0 and np.isfinite(h)):
        raise SvmtoolError(f"h must be > 0, got {h}")
    if not tol > 0:
        raise SvmtoolError(f"tol must be > 0, got {tol}")
    if any(not (r >= 0 and np.isfinite(r)) for r in regs):
        raise SvmtoolError(f"reg must be >= 0, got {list(regs)}")
    if coords is None:
        coords = draw_coordinates(W.shape, checks, np.random.default_rng(seed + 1))
    for d, c in coords:
        if not (0 <= d < W.shape[0] and 0 <= c < W.shape[1]):
            raise SvmtoolError(
                f"coordinate ({d}, {c}) is outside W, which is {W.shape[0]} x {W.shape[1]}"
            )
    reports = []
    for fn in functions:
        reports.append(
            check_function(
                fn,
                W,
                X,
                y,
                regs=regs,
                delta=delta,
                coords=coords,
                h=h,
                tol=tol,
                seed=seed + 2,
                probes=probes,
            )
        )
        if on_function is not None:
            on_function(reports[-1])
    comparison = None
    if len(functions) == 2 and all(r.verdict != "error" for r in reports):
        a, b = functions
        used = reports[0].delta if reports[0].delta == reports[1].delta else 1.0
        comparison = compare_functions(a, b, W, X, y, regs[-1], used)
    return UserCheckReport(reports, comparison, X.shape[0], W.shape, source, point, h, tol)


def _validated(W, X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    W = np.array(W, dtype=np.float64)
    X = np.array(X, dtype=np.float64)
    y = np.asarray(y)
    if W.ndim != 2 or X.ndim != 2 or y.ndim != 1:
        raise SvmtoolError(
            f"expected W (D, C), X (N, D), y (N,); got {W.shape}, {X.shape}, {y.shape}"
        )
    if X.shape[1] != W.shape[0] or X.shape[0] != y.shape[0]:
        raise SvmtoolError(f"shapes do not fit: W {W.shape}, X {X.shape}, y {y.shape}")
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= W.shape[1])):
        raise SvmtoolError(f"y must hold integer labels in [0, {W.shape[1]})")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(X))):
        raise SvmtoolError("W and X must be finite")
    return W, X, y.astype(np.int64)


def check_gradient(
    f: Callable,
    W,
    X,
    y,
    reg: float | Sequence[float] | None = None,
    *,
    delta: float = 1.0,
    checks: int = 10,
    h: float = 1e-5,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    probes: bool = True,
) -> UserCheckReport:
    """Check a CS231n-style ``f(W, X, y, reg) -> (loss, dW)`` at W (D, C), X (N, D), y (N,).

    ``reg=None`` checks at reg = 0 and again at 5e1 (as the notebook does).
    Returns a report; ``print(report)`` shows its tables, ``report.passed``
    says whether the gradient is right. Example::

        from svmtool import check_gradient
        print(check_gradient(svm_loss_naive, W, X_dev, y_dev))
    """
    regs = DEFAULT_REGS if reg is None else ([reg] if np.isscalar(reg) else list(reg))
    fn = UserFunction.wrap(f, origin=getattr(f, "__module__", "") or "")
    return run_check(
        [fn],
        W,
        X,
        y,
        regs=[float(r) for r in regs],
        delta=delta,
        checks=checks,
        h=h,
        tol=tol,
        seed=seed,
        probes=probes,
    )
