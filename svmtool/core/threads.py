"""How a hot loop uses the cores: the BLAS thread count, chosen by measurement.

Why measure rather than assume: on the same 2 vCPUs the right answer changes
with the CPU, the BLAS kernels and the load. On an AVX-512 Xeon with OpenBLAS
(SkylakeX kernels) the training step's two products ran 1.5x faster with two
BLAS threads on a quiet machine, another day 2x slower; when another process
holds one core, two threads were 2-13x slower than one, because OpenBLAS's
threads meet at the end of every call and a descheduled one stalls the other.

So a loop asks a ``ThreadChoice`` which count to use for its next step, after
telling it how long the previous step took. The choice probes the candidates
on real steps (no extra work), keeps the fastest for a window of steps, and
probes again, sooner when the steps slow down (load arrived) and less often
while the answer stays the same. ``ThreadChoice`` is pure bookkeeping on the
timings it is given; ``BlasSteps`` is the thin part that reads the clock and
sets OpenBLAS's (or MKL's) thread count through threadpoolctl.
"""

from __future__ import annotations

import contextlib
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# More threads must beat fewer by this factor to be chosen: fewer threads leave
# a core to the rest of the machine and suffer less when load arrives.
MARGIN = 0.9


def fastest(
    timings: Mapping[int, Sequence[float]],
    margin: float = MARGIN,
    statistic: Callable[[Sequence[float]], float] = statistics.median,
) -> int:
    """The thread count whose ``statistic`` (the median) of step times is lowest; a
    larger count wins only when its statistic is below ``margin`` times that of
    the best smaller count.

    timings: thread count -> step durations in seconds (counts without any
    duration are ignored). Raises ValueError when no count has a duration.
    """
    typical = {n: statistic(t) for n, t in timings.items() if len(t)}
    if not typical:
        raise ValueError("no timings to choose from")
    best = min(typical)
    for n in sorted(typical):
        if typical[n] < margin * typical[best]:
            best = n
    return best


def low(times: Sequence[float]) -> float:
    """The second-smallest duration (the smallest of one or two): a step is only
    ever slowed by the rest of the machine, so the low end is a candidate's own
    speed; not the smallest, which one lucky step (measured 0.64 ms on two cores
    with a busy core, 1.5 ms typical) would decide."""
    ordered = sorted(times)
    return ordered[1] if len(ordered) > 2 else ordered[0]


class ThreadChoice:
    """Which thread count each step of a loop uses, from the durations of the steps.

    Call ``next(seconds)`` before every step with the previous step's duration
    (None before the first); it returns the count for the coming step.

    The largest count is the default. A probe times ``probe`` steps on each
    candidate, in alternating runs of ``run`` steps whose first step is not
    timed, and its verdict is the ``fastest`` by their ``low`` end (noise
    only slows steps down: two slow steps of four decided medians).
    The choice changes only when two probes in a row give the same other
    verdict: single probes, on a shared machine, chose one core in 15 probes
    of 37 where two cores were 1.5x faster (a descheduled step or two decides
    a short probe), and each wrong choice held for a window of 64+ steps.
    A verdict against the current choice runs on trial for ``recheck`` steps
    and another probe follows: a real change (load arriving) costs two short
    probes, a noisy verdict ``recheck`` steps.

    A candidate whose first two probe steps both take more than ``give_up``
    times the best step seen (in this probe, or the choice's median in the last
    one) is dropped from the probe: it is clearly worse, and its slow steps are
    what a probe costs. The choice then runs ``window`` steps; the window
    doubles up to ``max_window`` each time a probe confirms the choice and is
    reset when it changes. When the median of the last ``recent`` steps of a
    window exceeds ``drift`` times the choice's probe median (load arrived),
    the next probe starts at once; load that leaves is noticed at the end of
    the window. (Medians over several steps, so that the noise of a shared
    machine, one slow step here and there, does not start probes.)

    Without ``probe_first`` the first window runs on the default before any
    probe: for loops of a few long steps, which a probe would mostly spend.
    """

    def __init__(
        self,
        counts: Sequence[int],
        *,
        probe: int = 4,
        run: int = 3,
        window: int = 64,
        max_window: int = 1024,
        recheck: int = 8,
        give_up: float = 3.0,
        drift: float = 1.5,
        recent: int = 8,
        probe_first: bool = True,
    ) -> None:
        if not counts or min(counts) < 1:
            raise ValueError(f"thread counts must be >= 1, got {list(counts)}")
        if probe < 1 or run < 2 or window < 1 or max_window < window or recheck < 1:
            raise ValueError("probe, window, recheck >= 1, run >= 2, max_window >= window required")
        self.counts = sorted(set(counts))
        self.probe, self.run = probe, run
        self.first_window, self.max_window = window, max_window
        self.recheck = recheck
        self.give_up, self.drift, self.recent = give_up, drift, max(1, recent)
        self.window = window
        self.choice = self.counts[-1]  # the default until two probes agree otherwise
        self.reference: float | None = None  # the choice's median in the last probe
        self.decisions: list[int] = []  # the choice after every probe, in order
        self.verdicts: list[int] = []  # every probe's fastest, in order
        self._running: int | None = None  # the count the coming step runs with
        self._counted = False  # whether the coming step's time counts in the probe
        self._trial: int | None = None  # a verdict against the choice, on trial
        self._slowed_to: float | None = None  # the median that started this probe
        self._start_probe()
        if not probe_first:  # a window on the default first; its steps set the reference
            self._timings, self._queue, self._steps_left = None, [], window

    def _start_probe(self) -> None:
        self._timings: dict[int, list[float]] | None = {n: [] for n in self.counts}
        self._dropped: set[int] = set()
        # Runs of ``run`` steps per candidate, the first of each not counted:
        # changing the count costs a wake-up of the helper threads that running
        # on it does not (with a busy core, two-core steps in alternating probes
        # measured a median 4.0-4.7 ms, in a run of two-core steps 1.8-1.9 ms).
        rounds = -(-self.probe // (self.run - 1))
        one_run = [False] + [True] * (self.run - 1)
        self._queue = [
            (n, counted) for _ in range(rounds) for n in self.counts for counted in one_run
        ]
        self._steps_left = 0
        self._recent: list[float] = []

    def next(self, seconds: float | None) -> int:
        """Record the previous step's duration (None at the start); the count for the next."""
        if seconds is not None and self._running is not None:
            if self._timings is not None:
                self._record_probe(self._running, seconds)
            else:
                self._record_window(seconds)
        if self._timings is not None and self._queue:
            self._running, self._counted = self._queue.pop(0)
        else:
            self._running = self.running
        return self._running

    def _record_probe(self, count: int, seconds: float) -> None:
        assert self._timings is not None
        times = self._timings[count]
        if self._counted:
            times.append(seconds)
        if self._counted and len(times) == 2 and len(self.counts) > 1:
            seen = [min(t) for n, t in self._timings.items() if n != count and t]
            if self.reference is not None:
                seen.append(self.reference)
            if seen and min(times) > self.give_up * min(seen):
                self._dropped.add(count)
                self._queue = [job for job in self._queue if job[0] != count]
        if not self._queue:
            self._decide()

    def _record_window(self, seconds: float) -> None:
        self._steps_left -= 1
        self._recent.append(seconds)
        if len(self._recent) > self.recent:
            del self._recent[0]
        if self.reference is None and len(self._recent) == self.recent:
            self.reference = statistics.median(self._recent)  # no probe before
        slowed = (
            self.reference is not None
            and len(self._recent) == self.recent
            and statistics.median(self._recent) > self.drift * self.reference
        )
        if slowed or self._steps_left <= 0:
            # The level that started the probe: if the probe keeps the choice,
            # it is the new normal (load that comes and goes), not a reason to
            # probe again 8 steps later.
            self._slowed_to = statistics.median(self._recent) if slowed else None
            self._start_probe()

    def _decide(self) -> None:
        assert self._timings is not None
        kept = {n: t for n, t in self._timings.items() if n not in self._dropped}
        verdict = fastest(kept or self._timings, statistic=low)
        self.verdicts.append(verdict)
        if verdict == self.choice:
            if self.decisions:
                self.window = min(2 * self.window, self.max_window)
            self._trial, self._steps_left = None, self.window
        elif self._trial == verdict:  # a change, seen twice in a row
            self.choice, self.window = verdict, self.first_window
            self._trial, self._steps_left = None, self.window
        else:  # one verdict against: try it for a few steps, then look again
            self._trial, self._steps_left = verdict, self.recheck
        running = self.running
        if self._timings[running]:
            self.reference = statistics.median(self._timings[running])
            if verdict == self.choice and self._slowed_to is not None:
                self.reference = max(self.reference, self._slowed_to)
        self.decisions.append(self.choice)
        self._timings = None
        self._recent = []

    @property
    def running(self) -> int:
        """The count the steps between probes run with: the choice, or a verdict
        against it on trial until the next probe."""
        return self.choice if self._trial is None else self._trial


def _blas_controller():
    """threadpoolctl's controller of the loaded BLAS libraries, made once (it
    scans the loaded libraries: ~3 ms), or None without threadpoolctl or BLAS."""
    global _CONTROLLER
    if _CONTROLLER is False:
        try:
            from threadpoolctl import ThreadpoolController

            selected = ThreadpoolController().select(user_api="blas")
            _CONTROLLER = selected if len(selected.lib_controllers) else None
        except ImportError:
            _CONTROLLER = None
    return _CONTROLLER


_CONTROLLER = False  # not looked up yet


def one_blas_thread():
    """A context holding BLAS to one thread, for work split over our own threads:
    a multi-threaded product in one worker would spin cores the other needs
    (measured 1.5-2x slower than one BLAS thread per worker)."""
    controller = _blas_controller()
    return nullcontext() if controller is None else controller.limit(limits=1)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# A product is split only when every part still has this many multiply-adds:
# below it the hand-off costs more than it saves, and BLAS may switch to its
# small-matrix kernels, whose rounding could differ from the whole product's.
MIN_PART = 2_000_000

# Row blocks of a split product start at multiples of this. BLAS's kernel
# computes the output's rows in groups (12 rows for OpenBLAS's float32 Haswell
# kernel, also picked on AMD Zen; 2 for float64; 4 or 1 elsewhere) and the
# last, partial group with other code, which rounds differently: a block
# boundary inside a group makes its rows come out of the partial-group code,
# so the split product differed from the whole one in the last float32 digit
# (seen on a Zen 3 with 100-row blocks). 96 is a multiple of every group size
# seen (1, 2, 4, 8, 12, 16, 32).
ROW_ALIGN = 96


class _Helper:
    """One thread that runs the jobs handed to it (numpy releases the GIL in BLAS
    and in its loops over large arrays), and hands back each one's result."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True, name="svmtool-core")
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.done.put((job(), None))
            except BaseException as exc:  # handed back to the caller
                self.done.put((None, exc))

    def answer(self) -> object:
        """The result of the oldest job not yet answered (its exception is raised)."""
        value, failure = self.done.get()
        if failure is not None:
            raise failure
        return value

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()


class SplitSteps:
    """The steps of a loop with their products split over the cores, or not, as
    ``ThreadChoice`` decides from the steps' durations.

    with SplitSteps() as steps:
        for ...:
            steps.next()                  # first thing in every step
            scores = steps.matmul(A, B)   # A @ B

    BLAS is held to one thread inside; a split product gives each core a block
    of A's rows, so every element is computed by the same single-threaded
    kernel either way: results are bit-identical whatever is chosen (unlike
    BLAS's own threads, whose results change with the thread count), and a
    run stays reproducible. The thread count in force before is restored on
    exit.
    """

    def __init__(
        self,
        choice: ThreadChoice | None = None,
        clock: Callable[[], float] = time.perf_counter,
        workers: int | None = None,
        **options: int | float,
    ) -> None:
        top = cores() if workers is None else workers
        if choice is None and top > 1:
            choice = ThreadChoice(sorted({1, top}), **options)  # type: ignore[arg-type]
        self.choice = choice
        self._clock = clock
        self._helpers: list[_Helper] = []
        self._limit = None
        self._last: float | None = None
        self.parts = 1  # how the current step's products are split

    def __enter__(self) -> SplitSteps:
        self._limit = one_blas_thread()
        self._limit.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for helper in self._helpers:
            helper.stop()
        self._helpers = []
        if self._limit is not None:
            self._limit.__exit__(None, None, None)
            self._limit = None

    def next(self) -> None:
        """Call at the start of every step: times the previous one, picks this one's split."""
        if self.choice is None:
            return
        now = self._clock()
        self.parts = self.choice.next(None if self._last is None else now - self._last)
        while len(self._helpers) < self.parts - 1:
            self._helpers.append(_Helper())
        self._last = self._clock()

    def _blocks(self, a: np.ndarray, n: int) -> list[int]:
        """Row bounds of the blocks of a (M, K) @ (K, n) over the current split:
        near-equal blocks whose inner bounds are multiples of ``ROW_ALIGN``."""
        m, k = a.shape
        parts = min(self.parts, max(1, (m * k * n) // MIN_PART), m)
        inner = {round(m * i / parts / ROW_ALIGN) * ROW_ALIGN for i in range(1, parts)}
        return [0, *sorted(b for b in inner if 0 < b < m), m]

    def _over_blocks(self, bounds: list[int], job: Callable[[int, int], object]) -> None:
        """job(lo, hi) for every block: the first here, the others on the helpers."""
        helpers = self._helpers[: len(bounds) - 2]
        for helper, lo, hi in zip(helpers, bounds[1:-1], bounds[2:], strict=True):
            helper.jobs.put(lambda lo=lo, hi=hi: job(lo, hi))
        try:
            job(bounds[0], bounds[1])
        finally:
            # Every helper's answer is collected, so none is left for the next product.
            failures = []
            for helper in helpers:
                try:
                    helper.answer()
                except BaseException as exc:
                    failures.append(exc)
        if failures:
            raise failures[0]

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a @ b for 2-D a (M, K) and b (K, N), in row blocks of a over the chosen cores."""
        bounds = self._blocks(a, b.shape[1])
        if len(bounds) == 2:
            return a @ b
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))

        def block(lo: int, hi: int) -> None:
            np.matmul(a[lo:hi], b, out=out[lo:hi])

        self._over_blocks(bounds, block)
        return out

    def halves(self, m: int, work: int, job: Callable[[int, int], T]) -> tuple[T, T]:
        """``job(lo, hi)`` for the two fixed halves of ``range(m)`` ((0, m // 2) and
        (m // 2, m)): on two cores when the current step is split and ``work``
        (a half's multiply-adds) is at least ``MIN_PART``, else both here. The
        halves do not depend on the split, so neither do the results."""
        half = m // 2
        if self.parts < 2 or not self._helpers or work < MIN_PART:
            return job(0, half), job(half, m)
        helper = self._helpers[0]
        helper.jobs.put(lambda: job(half, m))
        try:
            first = job(0, half)
        except BaseException:
            with contextlib.suppress(BaseException):
                helper.answer()  # collected, so that none is left for the next job
            raise
        return first, helper.answer()
