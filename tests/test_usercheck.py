"""gradcheck --loss: a user's own loss functions, written by the tests in the styles
students write them (loops and vectorized, both regularization conventions, each
known mistake), each held to its verdict, exit code and message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.core.diagnose import diagnose, reference
from svmtool.io.usercode import UserFunction, load_functions, parse_spec
from svmtool.usercheck import check_gradient, run_check

runner = CliRunner()

LOOP = """
import numpy as np


def svm_loss_naive(W, X, y, reg):
    dW = np.zeros(W.shape)
    num_classes = W.shape[1]
    num_train = X.shape[0]
    loss = 0.0
    for i in range(num_train):
        scores = X[i].dot(W)
        correct_class_score = scores[y[i]]
        for j in range(num_classes):
            if {SKIP}j == y[i]:
                continue
            margin = {MARGIN}
            if margin > 0:
                loss += margin
                dW[:, j] += X[i]
                {CORRECT}dW[:, y[i]] -= X[i]
    loss /= {LOSS_N}
    dW /= {GRAD_N}
    loss += {LOSS_REG}
    dW += {GRAD_REG}
    return loss, dW
"""

VECTORIZED = """
import numpy as np


def svm_loss_vectorized(W, X, y, reg):
    num_train = X.shape[0]
    rows = np.arange(num_train)
    scores = X.dot(W)
    correct = scores[rows, y][:, None]
    margins = {MARGINS}
    {ZERO_CORRECT}margins[rows, y] = 0
    loss = margins.sum() / {LOSS_N}
    loss += {LOSS_REG}
    binary = (margins > 0).astype(float)
    binary[rows, y] = {CORRECT_COEFF}
    dW = X.T.dot(binary) / {GRAD_N}
    dW += {GRAD_REG}
    return loss, dW
"""


def substitutions(style: str, a: float, mistake: str) -> dict[str, str]:
    """The template's pieces for a convention (a = 1 or 0.5) with one mistake."""
    b = 2 * a
    subs = {
        "SKIP": "",
        "MARGIN": "scores[j] - correct_class_score + 1",
        "CORRECT": "",
        "MARGINS": "np.maximum(0, scores - correct + 1)",
        "ZERO_CORRECT": "",
        "CORRECT_COEFF": "-binary.sum(axis=1)",
        "LOSS_N": "num_train",
        "GRAD_N": "num_train",
        "LOSS_REG": f"{a} * reg * np.sum(W * W)",
        "GRAD_REG": f"{b} * reg * W",
    }
    bias_free_grad = f"np.vstack([{b} * reg * W[:-1], np.zeros((1, W.shape[1]))])"
    changes = {
        "correct": {},
        "reg-grad-factor": {"GRAD_REG": f"{a} * reg * W"},
        "no-reg-grad": {"GRAD_REG": "0"},
        "no-reg-loss": {"LOSS_REG": "0"},
        "loss-not-averaged": {"LOSS_N": "1"},
        "grad-not-averaged": {"GRAD_N": "1"},
        "wrong-size": {"LOSS_N": "X.shape[1]", "GRAD_N": "X.shape[1]"},
        "correct-class-counted": (
            {"SKIP": "False and "} if style == "loop" else
            {"ZERO_CORRECT": "# ", "CORRECT_COEFF": "-binary.sum(axis=1)"}
        ),
        "delta-outside": (
            {"MARGIN": "max(0, scores[j] - correct_class_score) + 1"} if style == "loop" else
            {"MARGINS": "np.maximum(0, scores - correct) + 1"}
        ),
        "no-correct-term": {"CORRECT": "# "} if style == "loop" else {"CORRECT_COEFF": "0"},
        "bias-not-regularized": {
            "LOSS_REG": f"{a} * reg * np.sum(W[:-1] * W[:-1])",
            "GRAD_REG": bias_free_grad,
        },
    }[mistake]  # fmt: skip
    subs.update(changes)
    return subs


def write_loss(tmp_path, style: str, a: float, mistake: str, name: str = "linear_svm.py"):
    template = LOOP if style == "loop" else VECTORIZED
    path = tmp_path / name
    path.write_text(template.format(**substitutions(style, a, mistake)))
    return path


def small_batch(n=50, d=31, c=10, seed=0):
    """Scores spread about 1 around the margin: about half the margins are active."""
    rng = np.random.default_rng(seed)
    X = 50 * rng.standard_normal((n, d))
    X[:, -1] = 1.0
    y = np.arange(n) % c
    W = 0.003 * rng.standard_normal((d, c))
    return W, X, y


def check_file(path, func=None, regs=(0.0, 50.0), checks=6, **kwargs):
    spec = parse_spec(f"{path}:{func}" if func else str(path))
    W, X, y = small_batch()
    return run_check(load_functions(spec), W, X, y, regs=regs, checks=checks, **kwargs)


# What the diagnosis must name for each mistake: (part, key) pairs in its keys,
# or a phrase of the regularization verdict.
EXPECTED = {
    "reg-grad-factor": "regularization gradient",
    "no-reg-grad": "no regularization term in the gradient",
    "no-reg-loss": "regularization in the gradient but not in the loss",
    "loss-not-averaged": "loss:not-averaged",
    "grad-not-averaged": "gradient:not-averaged",
    "wrong-size": "loss:divided-by-D",
    "correct-class-counted": "loss:correct-class-counted",
    "delta-outside": "loss:delta-outside-max",
    "no-correct-term": "gradient:no-correct-class-term",
    "bias-not-regularized": "gradient:bias-not-regularized",
}


@pytest.mark.parametrize("style", ["loop", "vectorized"])
@pytest.mark.parametrize("a", [1.0, 0.5], ids=["reg*sum", "0.5*reg*sum"])
def test_a_correct_function_is_right_in_either_convention(tmp_path, style, a):
    report = check_file(write_loss(tmp_path, style, a, "correct"))
    (fn,) = report.functions
    assert fn.verdict == "right" and report.exit_code == 0, fn.findings
    expected = "0.5 * reg" if a == 0.5 else "reg * sum(W*W) (gradient 2"
    assert fn.convention.startswith(expected)
    assert all(p.status == "ok" for p in fn.probes)
    assert "RIGHT" in str(report)


@pytest.mark.parametrize("style", ["loop", "vectorized"])
@pytest.mark.parametrize("a", [1.0, 0.5], ids=["reg*sum", "0.5*reg*sum"])
@pytest.mark.parametrize("mistake", sorted(EXPECTED))
def test_each_known_mistake_is_named(tmp_path, style, a, mistake):
    report = check_file(write_loss(tmp_path, style, a, mistake))
    (fn,) = report.functions
    assert fn.verdict == "wrong" and report.exit_code == 1
    diagnoses = [r.diagnosis for r in fn.regs]
    want = EXPECTED[mistake]
    if ":" in want:
        assert any(want in d.keys for d in diagnoses), [d.keys for d in diagnoses]
    else:
        assert any(d.reg_mistake and want in d.reg_mistake for d in diagnoses), [
            d.mistakes for d in diagnoses
        ]
    assert "WRONG" in str(report)
    assert not any("matches no known mistake" in m for d in diagnoses for m in d.mistakes)


def test_wrong_regularization_is_invisible_at_reg_zero_and_caught_at_5e1(tmp_path):
    report = check_file(write_loss(tmp_path, "loop", 1.0, "reg-grad-factor"))
    at_zero, at_50 = report.functions[0].regs
    assert at_zero.diagnosis.correct
    assert not at_50.diagnosis.correct
    assert "factor 2" in at_50.diagnosis.reg_mistake
    # Its gradient disagrees with its own loss at reg = 50: self-consistency FAILs too.
    assert any(c.status == "FAIL" for c in at_50.gradcheck.checks)


def test_an_unknown_mistake_says_where_the_gradient_differs():
    def odd(W, X, y, reg):
        loss, dW = reference(W, X, y, reg, 1.0)
        dW = dW.copy()
        dW[5:9, 3] += 0.3
        return loss, dW

    W, X, y = small_batch()
    report = check_gradient(odd, W, X, y, reg=0.0)
    diag = report.functions[0].regs[0].diagnosis
    assert "the gradient matches no known mistake" in diag.mistakes
    where = diag.gradient_difference
    assert [c for c, _ in where.columns] == [3]
    assert sorted(r for r, _ in where.rows) == [5, 6, 7, 8]
    assert where.rows_differing == 4 and not where.bias_row_differs
    assert "columns (class: max |difference|): 3 (0.3)" in str(report)


def test_stubs_are_called_not_implemented():
    W, X, y = small_batch()
    zeros = check_gradient(lambda W, X, y, reg: (0.0, np.zeros(W.shape)), W, X, y)
    assert "not implemented yet?" in zeros.functions[0].findings[0]

    def starter(W, X, y, reg):  # the starter code: the loss done, dW still zeros
        return reference(W, X, y, reg, 1.0)[0], np.zeros(W.shape)

    report = check_gradient(starter, W, X, y)
    assert any("dW = np.zeros(W.shape)" in f for f in report.functions[0].findings)
    assert report.exit_code == 1


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_hygiene_in_place_changes_and_bad_returns():
    W, X, y = small_batch()

    def mutates(W, X, y, reg):
        loss, dW = reference(W, X, y, reg, 1.0)
        W -= 0.1 * dW  # a training step inside the loss: corrupts the caller's W
        return loss, dW

    W_before = W.copy()
    report = check_gradient(mutates, W, X, y)
    assert np.array_equal(W, W_before)  # it got a copy
    assert report.functions[0].mutated == ["W"]
    assert any("changes W in place" in f for f in report.functions[0].findings)

    cases = {
        "np.matrix": (lambda W, X, y, reg: (1.0, np.matrix(np.zeros(W.shape))), "np.matrix"),
        "shape": (lambda W, X, y, reg: (1.0, np.zeros((3, 3))), "shape (3, 3)"),
        "transposed": (lambda W, X, y, reg: (1.0, np.zeros(W.shape[::-1])), "2015"),
        "nan": (lambda W, X, y, reg: (float("nan"), np.zeros(W.shape)), "loss of nan"),
        "nan dW": (lambda W, X, y, reg: (1.0, np.full(W.shape, np.nan)), "NaN"),
        "single": (lambda W, X, y, reg: np.zeros(W.shape), "pair (loss, dW)"),
        "array loss": (lambda W, X, y, reg: (np.ones(2), np.zeros(W.shape)), "not a number"),
    }
    for label, (fn, fragment) in cases.items():
        report = check_gradient(fn, W, X, y)
        assert report.exit_code == 1, label
        assert fragment in report.functions[0].bad_return, (label, report.functions[0].bad_return)


def test_hard_coded_class_count_works_by_accident_and_is_caught(tmp_path):
    source = LOOP.format(**substitutions("loop", 1.0, "correct")).replace(
        "num_classes = W.shape[1]", "num_classes = 10"
    )
    path = tmp_path / "hard10.py"
    path.write_text(source)
    report = check_file(path)
    fn = report.functions[0]
    assert all(r.diagnosis.correct for r in fn.regs)  # right at C = 10
    assert {p.status for p in fn.probes} == {"crashed"}
    assert "IndexError" in fn.probes[0].detail and "hard10.py, line" in fn.probes[0].detail
    assert any("works by accident" in f for f in fn.findings)
    assert report.exit_code == 1


def test_delta_is_passed_when_the_function_takes_it():
    W, X, y = small_batch()
    seen = []

    def with_delta(W, X, y, reg, delta=1.0):
        seen.append(delta)
        return reference(W, X, y, reg, delta)

    report = check_gradient(with_delta, W, X, y, delta=0.5)
    assert set(seen) == {0.5} and report.passed
    plain = check_gradient(lambda W, X, y, reg: reference(W, X, y, reg, 1.0), W, X, y, delta=0.5)
    assert plain.passed
    assert "checked at delta = 1" in plain.functions[0].delta_note
    assert "--delta 0.5 is not used" in plain.functions[0].delta_note


def test_diagnose_is_exact_on_the_reference():
    W, X, y = small_batch()
    for half in (False, True):
        loss, dW = reference(W, X, y, 3.0, 1.0, half=half)
        diag = diagnose(loss, dW, W, X, y, 3.0, 1.0)
        assert diag.correct and diag.mistakes == []
        assert diag.convention.startswith("0.5" if half else "reg")


def test_check_gradient_api_prints_tables_and_import_stays_light():
    W, X, y = small_batch()
    report = check_gradient(lambda W, X, y, reg: reference(W, X, y, reg, 1.0), W, X, y)
    text = str(report)
    assert "reg = 0" in text and "reg = 50" in text and "status" in text and "RIGHT" in text
    code = "import sys, svmtool; print('numpy' in sys.modules, callable(svmtool.check_gradient))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


# --- through the command line ----------------------------------------------------


@pytest.fixture
def small_npz(tmp_path):
    """A tiny dataset (4x4 RGB images) so a loop-based loss runs in milliseconds."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(
        path,
        X_train=rng.integers(0, 256, (120, 4, 4, 3), dtype=np.uint8),
        y_train=np.arange(120) % 10,
        X_test=rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8),
        y_test=np.arange(20) % 10,
    )
    return path


def cli(*args):
    return runner.invoke(app, ["gradcheck", *args])


def test_cli_checks_both_cs231n_functions_and_compares_them(tmp_path, small_npz):
    loop = LOOP.format(**substitutions("loop", 1.0, "reg-grad-factor"))
    vec = VECTORIZED.format(**substitutions("vectorized", 1.0, "correct"))
    path = tmp_path / "linear_svm.py"
    path.write_text(loop + vec.replace("import numpy as np", ""))
    result = cli("--loss", str(path), "--data", str(small_npz), "--checks", "4")
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "svm_loss_naive" in out and "svm_loss_vectorized" in out
    assert "WRONG: svm_loss_naive" in out and "RIGHT: svm_loss_vectorized" in out
    assert "the factor 2 is missing from the regularization gradient" in out
    assert "svm_loss_naive vs svm_loss_vectorized at reg = 50" in out
    assert "takes no delta, so it is checked at delta = 1" in out

    as_json = cli("--loss", str(path), "--data", str(small_npz), "--checks", "4", "--json")
    document = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and document["exit_code"] == 1
    naive, vectorized = document["functions"]
    assert naive["verdict"] == "wrong" and vectorized["verdict"] == "right"
    assert [r["reg"] for r in naive["regs"]] == [0.0, 50.0]
    assert document["comparison"]["gradient_difference"] > 0


def test_cli_right_code_exits_0_and_module_form_works(tmp_path, small_npz, monkeypatch):
    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "svm.py").write_text(VECTORIZED.format(**substitutions("vectorized", 0.5, "correct")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = cli("--loss", "mine.svm:svm_loss_vectorized", "--data", str(small_npz))
    assert result.exit_code == 0, result.output
    assert "Regularization: 0.5 * reg * sum(W*W)" in result.stdout


def test_cli_user_exception_shows_their_frames_only_and_exits_3(tmp_path, small_npz):
    path = tmp_path / "broken.py"
    path.write_text(
        textwrap.dedent(
            """
            import numpy as np

            def helper(W):
                return W[100000]

            def svm_loss_naive(W, X, y, reg):
                print("debugging output")
                helper(W)
            """
        )
    )
    result = cli("--loss", f"{path}:svm_loss_naive", "--data", str(small_npz))
    assert result.exit_code == 3
    err = result.stderr
    assert "Traceback (most recent call last)" in err and "return W[100000]" in err
    assert "svmtool" not in err.split("Error:")[0].replace(str(tmp_path), "")
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: svm_loss_naive raised: IndexError")
    assert f"{path}, line 5" in last
    assert "debugging output" not in result.stdout  # their prints go to stderr


@pytest.mark.parametrize(
    "source, fragments",
    [
        (
            "def svm_loss_naive(W, X, y, reg):\n    print 'hi'\n",
            ["SyntaxError", "line 2", "Python 2"],
        ),
        (
            "import numpy as np\ndef svm_loss_naive(W, X, y, reg):\n"
            "    for i in xrange(3):\n        pass\n    return 0.0, np.zeros(W.shape)\n",
            ["NameError", "xrange is Python 2"],
        ),
        ("from past.builtins import xrange\n", ["No module named 'past'", "pip install future"]),
        ("import numpy as np\nx = 1 / 0\n", ["ZeroDivisionError", "line 2"]),
    ],
    ids=["py2-print", "py2-xrange", "cs231n-past-import", "raises-on-import"],
)
def test_cli_import_and_python2_errors_exit_3(tmp_path, small_npz, source, fragments):
    path = tmp_path / "student.py"
    path.write_text(source)
    result = cli("--loss", str(path), "--data", str(small_npz))
    assert result.exit_code == 3, result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_cli_2015_layout_gets_its_hint(tmp_path, small_npz):
    path = tmp_path / "old.py"
    path.write_text(
        textwrap.dedent(
            """
            import numpy as np

            def svm_loss_vectorized(W, X, y, reg):
                # 2015: W is C x D, X is D x N
                scores = W.dot(X)
                n = X.shape[1]
                margins = np.maximum(0, scores - scores[y, np.arange(n)] + 1)
                margins[y, np.arange(n)] = 0
                binary = (margins > 0).astype(float)
                binary[y, np.arange(n)] = -binary.sum(axis=0)
                return margins.sum() / n + reg * np.sum(W * W), binary.dot(X.T) / n + 2 * reg * W
            """
        )
    )
    result = cli("--loss", str(path), "--data", str(small_npz))
    assert result.exit_code == 3
    assert "2015 layout (W: C x D, X: D x N)" in result.stderr


def test_cli_missing_function_and_file(tmp_path, small_npz):
    path = tmp_path / "empty.py"
    path.write_text("def unrelated():\n    pass\n")
    result = cli("--loss", str(path), "--data", str(small_npz))
    assert result.exit_code == 3 and "defines neither svm_loss_naive" in result.stderr
    result = cli("--loss", f"{path}:svm_loss", "--data", str(small_npz))
    assert (
        result.exit_code == 3 and "no function 'svm_loss' (it defines: unrelated)" in result.stderr
    )
    result = cli("--loss", str(tmp_path / "nope.py"), "--data", str(small_npz))
    assert result.exit_code == 3 and "does not exist" in result.stderr


def test_cli_weights_from_a_notebook(tmp_path, small_npz):
    path = write_loss(tmp_path, "vectorized", 1.0, "correct")
    rng = np.random.default_rng(3)
    good = tmp_path / "W.npy"
    np.save(good, 0.01 * rng.standard_normal((49, 10)))
    result = cli("--loss", str(path), "--data", str(small_npz), "--weights", str(good))
    assert result.exit_code == 0, result.output
    assert f"W from {good}" in result.stdout
    transposed = tmp_path / "WT.npy"
    np.save(transposed, np.zeros((10, 49)))
    result = cli("--loss", str(path), "--data", str(small_npz), "--weights", str(transposed))
    assert (
        result.exit_code == 1 and "transposed" in result.output and "Traceback" not in result.output
    )
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)  # would hang a plain open(); refused at once instead
    result = cli("--loss", str(path), "--data", str(small_npz), "--weights", str(fifo))
    assert result.exit_code == 1 and "not a regular file" in result.output
    lying = tmp_path / "lying.npy"
    lying.write_bytes(good.read_bytes()[:200])  # header says 49 x 10 float64, file is cut
    result = cli("--loss", str(path), "--data", str(small_npz), "--weights", str(lying))
    assert result.exit_code == 1 and "the header says" in result.output


@pytest.mark.parametrize("with_loss", [True, False])
def test_cli_plot_draws_the_worst_kink(tmp_path, small_npz, with_loss):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "kink.png"
    args = ["--data", str(small_npz), "--delta", "0", "--checks", "30", "--plot", str(plot)]
    if with_loss:
        source = VECTORIZED.format(**substitutions("vectorized", 1.0, "correct"))
        source = source.replace("reg):", "reg, delta=1.0):").replace("+ 1)", "+ delta)")
        path = tmp_path / "with_delta.py"
        path.write_text(source)
        args += ["--loss", f"{path}:svm_loss_vectorized"]
    # delta = 0 at a tiny W puts margins right at their kinks: some coordinate straddles.
    result = cli(*args)
    assert result.exit_code in (0, 1) and plot.exists(), result.output
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert "around its kink" in result.stderr


def test_loaded_function_is_called_on_copies(tmp_path):
    path = write_loss(tmp_path, "loop", 1.0, "correct")
    (fn,) = load_functions(parse_spec(str(path)))
    assert isinstance(fn, UserFunction) and fn.name == "svm_loss_naive" and not fn.takes_delta


def test_bias_left_out_is_seen_in_the_loss_too(tmp_path):
    report = check_file(write_loss(tmp_path, "vectorized", 1.0, "bias-not-regularized"))
    keys = report.functions[0].regs[1].diagnosis.keys
    assert "loss:bias-not-regularized" in keys and "gradient:bias-not-regularized" in keys


def test_sys_exit_in_user_code_is_their_error(tmp_path, small_npz):
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.exit(2)\n")
    result = cli("--loss", str(script), "--data", str(small_npz))
    assert result.exit_code == 3 and "if __name__ == '__main__'" in result.stderr
    W, X, y = small_batch()

    def exits(W, X, y, reg):
        raise SystemExit(0)

    report = check_gradient(exits, W, X, y)
    assert report.exit_code == 3 and "sys.exit(0)" in report.functions[0].error.summary


# --- what a review with sixty student files found --------------------------------


def vectorized_with(**changes) -> str:
    subs = substitutions("vectorized", 1.0, "correct")
    subs.update(changes)
    return VECTORIZED.format(**subs)


def loop_with(**changes) -> str:
    subs = substitutions("loop", 1.0, "correct")
    subs.update(changes)
    return LOOP.format(**subs)


@pytest.mark.parametrize(
    "source, key",
    [
        (loop_with(MARGIN="scores[j] - correct_class_score + 10"), "loss:delta-10"),
        (
            vectorized_with(CORRECT_COEFF="-binary.sum(axis=1)").replace(
                "binary = (margins > 0)", "binary = (margins >= 0)"
            ),
            "gradient:all-active-correct-counted",
        ),
        (vectorized_with(GRAD_N="num_train ** 2"), "gradient:divided-twice"),
        (
            vectorized_with().replace("binary = (margins > 0).astype(float)", "binary = margins"),
            "gradient:margin-values",
        ),
        (
            loop_with(LOSS_N="1", GRAD_N="1").replace(
                "    return loss, dW", "    return loss / num_train, dW / num_train"
            ),
            "loss:reg-divided-by-N",
        ),
    ],
    ids=["delta-10", ">=0-mask", "dW-over-N-twice", "margin-values", "reg-before-division"],
)
def test_more_mistakes_students_make_are_named(tmp_path, source, key):
    path = tmp_path / "student.py"
    path.write_text(source)
    report = check_file(path)
    keys = [k for r in report.functions[0].regs for k in r.diagnosis.keys]
    assert key in keys, (keys, report.functions[0].findings)
    assert report.exit_code == 1


def test_a_dW_that_is_a_multiple_says_the_ratio():
    W, X, y = small_batch()
    report = check_gradient(lambda W, X, y, reg: (reference(W, X, y, reg, 1.0)[0],
                                                  3.7 * reference(W, X, y, reg, 1.0)[1]),
                            W, X, y, reg=0.0)  # fmt: skip
    assert "dW is 3.7 times the hinge loss's gradient" in str(report)


def test_os_exit_and_a_raise_at_reg_50_are_exit_3():
    W, X, y = small_batch()

    def exits(W, X, y, reg):
        import os

        os._exit(0)

    assert check_gradient(exits, W, X, y).exit_code == 3

    def raises_with_reg(W, X, y, reg):
        loss, dW = reference(W, X, y, reg, 1.0)
        if reg != 0:
            dW += 2 * reg * W.T  # a shape error only when reg > 0
        return loss, dW

    report = check_gradient(raises_with_reg, W, X, y)
    fn = report.functions[0]
    assert report.exit_code == 3 and "raised at reg = 50" in fn.error.summary
    assert "Traceback" in fn.error.details and "Traceback" in str(report)


def test_swapped_generator_float32_and_interrupt():
    W, X, y = small_batch()
    swapped = check_gradient(lambda W, X, y, reg: reference(W, X, y, reg, 1.0)[::-1], W, X, y)
    assert "returned (dW, loss)" in swapped.functions[0].bad_return

    def gen(W, X, y, reg):
        yield reference(W, X, y, reg, 1.0)

    assert "uses yield" in check_gradient(gen, W, X, y).functions[0].bad_return

    def single(W, X, y, reg):
        loss, dW = reference(W.astype(np.float32), X.astype(np.float32), y, reg, 1.0)
        return np.float32(loss), dW.astype(np.float32)

    fn = check_gradient(single, W, X, y).functions[0]
    assert fn.float32 and "computes in float32" in fn.findings[0]
    assert all(r.diagnosis.grad_reading is not None for r in fn.regs)  # right, up to rounding

    def loops_forever(W, X, y, reg):
        raise KeyboardInterrupt  # what Ctrl-C does inside their loop

    from svmtool.io.usercode import UserInterrupted

    with pytest.raises(UserInterrupted, match=r"interrupted in loops_forever \(.*, line \d+\)"):
        check_gradient(loops_forever, W, X, y)


def test_hard_coded_sample_count_is_named_when_the_recheck_uses_fewer_rows():
    W, X, y = small_batch()
    n = X.shape[0]
    scores = X @ W
    # Put sample 0's margin against its lowest-scoring class exactly on the kink.
    others = [j for j in range(W.shape[1]) if j != y[0]]
    j0 = min(others, key=lambda j: scores[0, j])
    delta = float(scores[0, y[0]] - scores[0, j0])

    def fixed_n(W, X, y, reg, delta=1.0):
        assert X.shape[0] == n, "shapes differ"
        return reference(W, X, y, reg, delta)

    fn = UserFunction.wrap(fixed_n)
    report = run_check([fn], W, X, y, regs=[0.0], delta=delta, coords=[(0, j0)], probes=False)
    problem = report.functions[0].regs[0].problem or ""
    assert f"{n - 1} of the {n} samples" in problem and "hard-coded" in problem
    assert report.exit_code == 1


def test_cli_json_on_import_failure_and_usage_errors(tmp_path, small_npz):
    path = tmp_path / "bad.py"
    path.write_text("def svm_loss_naive(W, X, y, reg):\n    return 1 +\n")
    result = cli("--loss", str(path), "--data", str(small_npz), "--json")
    assert result.exit_code == 3
    document = json.loads(result.stdout)
    assert document["exit_code"] == 3 and "SyntaxError" in document["error"]["summary"]
    for spec, fragment in [(f"{path}:", "missing after ':'"), (f"{path}:no-name", "not a Python")]:
        result = cli("--loss", spec, "--data", str(small_npz))
        assert result.exit_code == 2 and fragment in result.stderr


def test_cli_file_with_relative_imports_is_imported_as_a_package_member(tmp_path, small_npz):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("import numpy as np\nONE = 1.0\n")
    (pkg / "linear_svm.py").write_text(
        "from .helpers import ONE\n"
        + vectorized_with(MARGINS="np.maximum(0, scores - correct + ONE)")
    )
    result = cli("--loss", str(pkg / "linear_svm.py"), "--data", str(small_npz))
    assert result.exit_code == 0, result.output


def test_a_hard_coded_delta_is_named_once_for_loss_and_gradient(tmp_path):
    path = tmp_path / "delta10.py"
    path.write_text(loop_with(MARGIN="scores[j] - correct_class_score + 10"))
    report = check_file(path)
    fn = report.functions[0]
    assert all("gradient:delta-10" in r.diagnosis.keys for r in fn.regs)
    named = [f for f in fn.findings if "delta = 10" in f]
    assert len(named) == 1 and named[0].endswith("(reg = 0, 50)")


def test_report_details_from_the_review():
    W, X, y = small_batch()
    # A refused return value leaves no stray per-reg line in the report.
    text = str(check_gradient(lambda W, X, y, reg: (1.0, np.zeros((2, 2))), W, X, y))
    assert "None" not in text and "shape (2, 2)" in text

    def numpy_raises(W, X, y, reg):
        return float(np.sum(X @ W, axis=2)), W  # the error is raised inside numpy

    error = check_gradient(numpy_raises, W, X, y).functions[0].error
    assert "AxisError" in error.summary and "fromnumeric" not in error.details
    assert "np.sum(X @ W, axis=2)" in error.details  # their own line is what is shown

    # Each function's report is handed over as soon as it is checked.
    done = []
    fns = [UserFunction.wrap(lambda W, X, y, reg: reference(W, X, y, reg, 1.0), name)
           for name in ("first", "second")]  # fmt: skip
    run_check(fns, W, X, y, regs=[0.0], checks=2, probes=False,
              on_function=lambda r: done.append((r.name, fns[1].calls)))  # fmt: skip
    assert done[0] == ("first", 0) and done[1][0] == "second"
