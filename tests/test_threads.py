"""The split of the hot loops over the cores: the decision logic on injected
timings (nothing is timed here), and the split's results against the whole product."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from svmtool.core import threads, train
from svmtool.core.threads import SplitSteps, ThreadChoice, fastest

ROOT = Path(__file__).resolve().parent.parent


def test_fastest_takes_the_lowest_median_and_prefers_fewer_threads_on_a_near_tie():
    assert fastest({1: [1.0, 1.1, 0.9], 2: [0.6, 5.0, 0.5]}) == 2  # median, not mean
    assert fastest({1: [1.0], 2: [0.95]}) == 1  # 5% faster is not worth a second core
    assert fastest({1: [1.0], 2: [0.85]}) == 2
    assert fastest({1: [1.0], 2: [3.0]}) == 1
    assert fastest({1: [], 2: [3.0]}) == 2  # a count without timings is not a candidate
    assert fastest({1: [1.0], 2: [0.8], 4: [0.75]}) == 2  # 4 must beat 2 by the margin
    with pytest.raises(ValueError):
        fastest({1: [], 2: []})


def test_the_low_end_of_a_probe_ignores_slow_steps_and_one_lucky_step():
    assert threads.low([0.6, 3.0, 3.0, 0.7]) == 0.7  # two descheduled steps of four
    assert threads.low([1.6, 0.6, 1.5, 1.7]) == 1.5  # one lucky step does not decide
    assert threads.low([2.0, 1.0]) == 1.0 and threads.low([2.0]) == 2.0
    timings = {1: [1.0, 1.1, 1.0, 1.2], 2: [0.6, 3.0, 3.0, 0.7]}
    assert fastest(timings) == 1 and fastest(timings, statistic=threads.low) == 2


def drive(choice: ThreadChoice, cost, steps: int) -> list[int]:
    """Run ``steps`` steps, ``cost(step, count)`` the injected duration; the counts used."""
    used, last = [], None
    for step in range(steps):
        count = choice.next(last)
        used.append(count)
        last = cost(step, count)
    return used


PROBE = 2 * 3  # steps per candidate in a probe: 2 runs of 3, 4 of them timed


def test_two_cores_are_chosen_when_they_are_faster():
    choice = ThreadChoice([1, 2])
    used = drive(choice, lambda step, n: {1: 1.0e-3, 2: 0.6e-3}[n], 2000)
    assert used[:12] == [1, 1, 1, 2, 2, 2] * 2  # the probe alternates runs of 3
    assert choice.choice == 2 and set(choice.decisions) == {2}
    assert used.count(1) == PROBE * len(choice.decisions)  # only probes ran on one core
    assert used.count(2) > 1950


def test_a_probe_does_not_time_the_first_step_of_each_run():
    # A step's duration is its index: the two-core steps timed are 4, 5, 10 and 11
    # (3 and 9 follow one-core steps: the helper threads wake up), median 7.5.
    choice = ThreadChoice([1, 2])
    used = drive(choice, lambda step, n: 1e-3 * step if n == 2 else 1.0, 13)
    assert used[:12] == [1, 1, 1, 2, 2, 2] * 2 and choice.verdicts == [2]
    assert choice.reference == pytest.approx(7.5e-3)


def test_two_cores_are_the_default_until_one_core_wins_two_probes_in_a_row():
    choice = ThreadChoice([1, 2])
    assert choice.choice == 2

    def cost(step, n):  # the first probe's one-core steps are fast by accident (noise)
        return 0.5e-3 if (n == 1 and step < 12) else {1: 1e-3, 2: 0.6e-3}[n]

    used = drive(choice, cost, 400)
    assert choice.verdicts[:2] == [1, 2]  # one verdict for one core, not confirmed
    assert choice.decisions[:2] == [2, 2]
    assert used[12 : 12 + choice.recheck] == [1] * choice.recheck  # tried, then probed again
    assert used[12 + choice.recheck + 12 :].count(1) <= PROBE * 3


def test_a_busy_core_costs_three_slow_probe_steps_after_the_first_probe():
    choice = ThreadChoice([1, 2])
    used = drive(choice, lambda step, n: {1: 1.0e-3, 2: 10e-3}[n], 3000)
    assert choice.choice == 1
    # The first probe compares both; two timed slow steps end two cores' part of it.
    assert used[:9] == [1, 1, 1, 2, 2, 2, 1, 1, 1]
    # Then the verdict is tried for 8 steps and confirmed by a second probe.
    assert used[9:17] == [1] * 8 and choice.decisions[:2] == [2, 1]
    later_probes = len(choice.verdicts) - 1
    assert used[9:].count(2) == 3 * later_probes
    assert later_probes <= 8  # windows double while the answer stays the same


def test_load_that_arrives_mid_run_is_noticed_within_a_few_steps():
    def cost(step, n):
        if step < 500:
            return {1: 1.0e-3, 2: 0.6e-3}[n]
        return {1: 1.2e-3, 2: 8e-3}[n]  # another process now holds a core

    choice = ThreadChoice([1, 2])
    used = drive(choice, cost, 1000)
    assert used[499] == 2
    switched = 500 + used[500:].index(1)
    assert switched <= 500 + 8 + 4  # the median of 8 steps turns, then one probe
    # Settled on one core after a second probe: then three steps of two per probe.
    assert used[switched + 40 :].count(2) <= 3 * 4
    assert choice.choice == 1


def test_load_that_leaves_is_noticed_at_the_end_of_a_window():
    def cost(step, n):
        if step < 300:
            return {1: 1.0e-3, 2: 8e-3}[n]
        return {1: 1.0e-3, 2: 0.6e-3}[n]

    choice = ThreadChoice([1, 2], window=64, max_window=128)
    used = drive(choice, cost, 800)
    assert choice.decisions[-1] == 2 and used[-1] == 2
    assert used[300 + 128 + 40 :].count(1) <= 3 * PROBE  # probes only


def test_a_window_steadily_slower_than_its_probes_does_not_probe_every_few_steps():
    # Steps that run faster during probes than between them (measured with a busy
    # core): a probe that keeps the choice takes the level that started it as the
    # new normal instead of probing again after 8 steps.
    used = []

    def cost(step, n):
        return {1: 1.0e-3, 2: 0.6e-3}[n] * (1.0 if 1 in used[-12:] else 1.8)

    choice = ThreadChoice([1, 2])
    for step in range(3000):
        used.append(choice.next(None if step == 0 else cost(step, used[-1])))
    assert set(choice.decisions) == {2}
    assert len(choice.verdicts) <= 16  # about two per window, not one every 30 steps
    assert used.count(1) <= PROBE * len(choice.verdicts)


def test_noise_alone_does_not_start_probes_or_change_the_choice():
    rng = np.random.default_rng(0)

    def cost(step, n):
        slow = 5.0 if rng.random() < 2 / 7 else 1.0  # descheduled steps, often
        return slow * {1: 1.0e-3, 2: 0.6e-3}[n]

    choice = ThreadChoice([1, 2])
    used = drive(choice, cost, 3000)
    assert len(choice.verdicts) <= 16 and set(choice.decisions) == {2}
    assert used.count(1) <= (PROBE + choice.recheck) * len(choice.verdicts)


def test_without_a_first_probe_the_default_runs_until_the_steps_slow_down():
    choice = ThreadChoice([1, 2], probe_first=False, window=1 << 20, max_window=1 << 20)
    used = drive(choice, lambda step, n: {1: 1.0e-3, 2: 0.6e-3}[n], 40)
    assert used == [2] * 40 and choice.reference == pytest.approx(0.6e-3)
    # Then another process holds a core: a probe, and one core.
    used = drive(choice, lambda step, n: {1: 1.2e-3, 2: 8e-3}[n], 160)
    assert choice.choice == 1 and used[-100:] == [1] * 100


def _noisy(rng, quiet: bool):
    """Step times like those measured on the benchmark's data (ms: two cores 0.6-1.0,
    one core 1.1-1.7, quiet; both 1.1-1.8 with a busy core), with one step in ten
    descheduled for 1-6 ms, on either count."""

    def cost(step, n):
        base = ({1: 1.1, 2: 0.6} if quiet else {1: 1.1, 2: 1.3})[n]
        t = base + rng.gamma(2.0, 0.15)
        if rng.random() < 0.1:
            t += rng.uniform(1.0, 6.0)
        return t * 1e-3

    return cost


@pytest.mark.parametrize("seed", range(5))
def test_noisy_quiet_steps_keep_two_cores_and_noisy_busy_ones_pick_one(seed):
    rng = np.random.default_rng(seed)
    quiet = drive(ThreadChoice([1, 2]), _noisy(rng, True), 1500)
    assert quiet.count(2) >= 0.95 * 1500
    busy = drive(ThreadChoice([1, 2]), _noisy(rng, False), 1500)
    assert busy.count(1) >= 0.8 * 1500


def test_one_candidate_is_always_chosen():
    choice = ThreadChoice([1])
    assert set(drive(choice, lambda step, n: 1e-3, 100)) == {1}
    with pytest.raises(ValueError):
        ThreadChoice([0, 2])


class Always:
    """A stand-in choice that always answers ``parts``."""

    def __init__(self, parts: int) -> None:
        self.parts = parts

    def next(self, seconds):
        return self.parts


def split_matches_whole() -> list[str]:
    """Every product the split serves, split in two, against the whole product
    on one BLAS thread: the cases that differ (empty when all are bit-identical).

    Row counts around the blocks' bounds: BLAS computes rows in groups (12 for
    OpenBLAS's float32 Haswell kernel) whose partial last group rounds
    differently, so a bound inside a group changed the last digit (Zen 3)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2100, 3073)).astype(np.float32)
    cases = []
    for m in (200, 203, 211, 1400, 2048, 2100):
        cases.append((f"{m} rows @ W", X[:m], 10))
    cases.append(("a strided batch", X[3 : 3 + 200 * 7 : 7], 10))
    cases.append(("a strided batch, 16 models", X[3 : 3 + 200 * 7 : 7], 160))
    cases.append(("batch.T @ coeff", X[3 : 3 + 200 * 7 : 7].T, 30))
    cases.append(("float64", X[:1400].astype(np.float64), 10))
    cases.append(("float64, 211 rows", X[:211].astype(np.float64), 10))
    differ = []
    for name, a, n in cases:
        b = rng.standard_normal((a.shape[1], n)).astype(a.dtype)
        with threads.one_blas_thread():
            whole = a @ b
        with SplitSteps(Always(2), workers=2) as cores:
            cores.next()
            assert cores.parts == 2
            split = cores.matmul(a, b)
        if split.dtype != whole.dtype or not np.array_equal(split, whole):
            differ.append(name)
    return differ


def test_a_split_product_is_bit_identical_to_the_whole_one():
    assert split_matches_whole() == []
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((5, 3073)).astype(np.float32)
    W = rng.standard_normal((3073, 10)).astype(np.float32)
    with SplitSteps(Always(2), workers=2) as cores:
        cores.next()
        small = cores.matmul(batch, W)  # too small to split: the plain product
    np.testing.assert_array_equal(small, batch @ W)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.mark.parametrize("coretype", ["Haswell", "Sandybridge"])
def test_the_split_is_bit_identical_on_other_openblas_kernels_too(coretype):
    # Another kernel family groups rows differently; OPENBLAS_CORETYPE takes
    # effect only when numpy loads, hence a new process. Only kernels this CPU
    # can run (Haswell's need AVX2, Sandybridge's AVX).
    need = {"Haswell": "avx2", "Sandybridge": "avx"}[coretype]
    info = threads._blas_controller()
    if info is None or info.lib_controllers[0].internal_api != "openblas":
        pytest.skip("numpy's BLAS is not OpenBLAS")
    if need not in _cpu_flags():
        pytest.skip(f"this CPU has no {need}")
    code = (
        "import sys, threadpoolctl; import tests.test_threads as t;"
        "arch = threadpoolctl.threadpool_info()[0].get('architecture');"
        "differ = t.split_matches_whole(); print(arch, differ); sys.exit(1 if differ else 0)"
    )
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[0].lower() == coretype.lower(), done.stdout


def test_halves_run_on_two_cores_when_split_and_in_order_either_way():
    def job(lo, hi):
        return lo, hi, threading.current_thread().name

    big, small = threads.MIN_PART, threads.MIN_PART - 1
    for parts, work, helped in [(1, big, False), (2, big, True), (2, small, False)]:
        with SplitSteps(Always(parts), workers=2) as cores:
            cores.next()
            first, second = cores.halves(7, work, job)
        assert first[:2] == (0, 3) and second[:2] == (3, 7)
        assert first[2] != "svmtool-core"
        assert (second[2] == "svmtool-core") == helped


def test_an_error_in_either_half_reaches_the_caller_and_leaves_no_answer_behind():
    def failing(where):
        def job(lo, hi):
            if (threading.current_thread().name == "svmtool-core") == (where == "helper"):
                raise MemoryError(f"no room in the {where}")
            return lo

        return job

    a = np.ones((4000, 1000), dtype=np.float32)
    b = np.ones((1000, 10), dtype=np.float32)
    with SplitSteps(Always(2), workers=2) as cores:
        cores.next()
        for where in ("helper", "caller"):
            with pytest.raises(MemoryError, match=where):
                cores.halves(10, threads.MIN_PART, failing(where))
            # The next split product gets its own answers, not a left-over one.
            np.testing.assert_array_equal(cores.matmul(a, b), np.full((4000, 10), 1000.0))


def test_training_gives_the_same_weights_whatever_split_is_chosen(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 3073)).astype(np.float32)
    y = rng.integers(0, 10, 1000)

    def run(parts: int) -> train.GridResult:
        monkeypatch.setattr(train, "SplitSteps", lambda **kw: SplitSteps(Always(parts), workers=2))
        return train.sgd_grid(X, y, 10, [1e-3, 1e-4], [1.0, 0.1], iters=12,
                              rng=np.random.default_rng(0))  # fmt: skip

    one, two = run(1), run(2)
    np.testing.assert_array_equal(one.weights, two.weights)
    np.testing.assert_array_equal(one.losses, two.losses)
    assert np.abs(one.weights[0]).max() > 0


def test_the_blas_thread_count_is_restored():
    controller = threads._blas_controller()
    if controller is None:
        pytest.skip("no BLAS that threadpoolctl controls")
    before = [lib.get_num_threads() for lib in controller.lib_controllers]
    with SplitSteps(Always(2), workers=2) as cores:
        cores.next()
        assert [lib.get_num_threads() for lib in controller.lib_controllers] == [1] * len(before)
    assert [lib.get_num_threads() for lib in controller.lib_controllers] == before


def test_an_error_in_the_helper_reaches_the_caller_and_leaves_no_answer_behind(monkeypatch):
    a = np.ones((4000, 1000), dtype=np.float32)
    b = np.ones((1000, 10), dtype=np.float32)
    real = np.matmul

    def failing_in_the_helper(x, y, out=None):
        if threading.current_thread().name == "svmtool-core":
            raise MemoryError("no room")
        return real(x, y, out=out)

    with SplitSteps(Always(2), workers=2) as cores:
        cores.next()
        monkeypatch.setattr(np, "matmul", failing_in_the_helper)
        with pytest.raises(MemoryError, match="no room"):
            cores.matmul(a, b)
        monkeypatch.setattr(np, "matmul", real)
        np.testing.assert_array_equal(cores.matmul(a, b), np.full((4000, 10), 1000.0, np.float32))
