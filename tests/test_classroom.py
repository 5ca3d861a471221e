"""gradcheck --loss on a classroom's files: each in a child process within a time
limit, a memory limit and an output cap; many files in one run, a summary, CSV and
JSON; and the hostile-code points (issue 16) that must still end cleanly."""

from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from svmtool.cli import app
from tests.test_usercheck import loop_with, vectorized_with

runner = CliRunner()

HANG = "import numpy as np\n\n\ndef svm_loss_naive(W, X, y, reg):\n    while True:\n        pass\n"
ABORT = "import os\n\n\ndef svm_loss_naive(W, X, y, reg):\n    os.abort()\n"
HOG = (
    "import numpy as np\n\n\ndef svm_loss_naive(W, X, y, reg):\n"
    "    keep = [np.ones(2**25) for _ in range(1000)]\n    return 0.0, np.zeros(W.shape)\n"
)
FLOOD = "def svm_loss_naive(W, X, y, reg):\n    while True:\n        print('x' * 1000)\n"


@pytest.fixture
def small_npz(tmp_path):
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


def check(*args):
    return runner.invoke(app, ["gradcheck", "--checks", "3", "--timeout", "20", *args])


def write(folder, name, source):
    path = folder / name
    path.write_text(source)
    return path


@pytest.mark.parametrize(
    "source, timeout, verdict",
    [
        # The limit is wall clock from the child's start: the hang gets 5 s (enough for a
        # loaded machine to reach its loop), the others a limit they must not hit first.
        (HANG, "5", "timed out after 5 s in svm_loss_naive, line "),
        (ABORT, "30", "crashed: SIGABRT in svm_loss_naive, line 5"),
        (HOG, "30", "out of memory (--memory 512 MiB)"),
        (FLOOD, "30", "output flooded in svm_loss_naive, line 3"),
    ],
    ids=["hang", "abort", "memory-hog", "flood"],
)
def test_a_file_past_a_limit_gets_its_verdict_and_exit_3(
    tmp_path, small_npz, source, timeout, verdict
):
    path = write(tmp_path, "student.py", source)
    result = check(
        "--loss", str(path), "--data", str(small_npz), "--memory", "512M", "--timeout", timeout
    )
    assert result.exit_code == 3, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and verdict in last, result.stderr
    assert "Traceback" not in result.stderr or source is HOG


def test_many_files_one_run_same_verdicts_as_alone_csv_and_json(tmp_path, small_npz):
    folder = tmp_path / "class"
    folder.mkdir()
    write(folder, "a_right.py", vectorized_with())
    write(folder, "b_wrong.py", loop_with(GRAD_REG="reg * W"))
    write(folder, "c_hang.py", HANG)
    write(folder, "d_abort.py", ABORT)
    write(folder, "e_syntax.py", "def svm_loss_naive(W, X, y, reg):\n    return 1 +\n")
    sub = folder / "late"
    sub.mkdir()
    write(sub, "f_right.py", loop_with())
    marks = tmp_path / "marks.csv"
    data = ["--data", str(small_npz)]
    # A time limit that a loaded machine cannot make the right files miss.
    result = check("--loss", str(folder), *data, "--csv", str(marks), "--jobs", "2",
                   "--timeout", "8")  # fmt: skip
    assert result.exit_code == 1, result.output
    with open(marks, newline="") as f:
        rows = list(csv.DictReader(f))
    got = {(r["file"].rsplit("/", 1)[-1], r["function"]): r["verdict"] for r in rows}
    assert got == {
        ("a_right.py", "svm_loss_vectorized"): "right",
        ("b_wrong.py", "svm_loss_naive"): "wrong",
        ("c_hang.py", "svm_loss_naive"): "timed out",
        ("d_abort.py", "svm_loss_naive"): "crashed",
        ("e_syntax.py", "(the file)"): "could not import",
        ("f_right.py", "svm_loss_naive"): "right",
    }
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)  # sorted, the folder's last
    wrong = next(r for r in rows if r["verdict"] == "wrong")
    assert "factor 2" in wrong["mistake"] and wrong["convention"] == "mixed"
    assert "6 files, 6 functions: 2 right, 1 wrong, 1 could not import" in result.stdout
    # Each file alone: the same verdict, and its single-file exit code.
    for name, code in [("a_right.py", 0), ("b_wrong.py", 1), ("d_abort.py", 3)]:
        alone = check("--loss", str(folder / name), *data, "--json", "--timeout", "30")
        assert alone.exit_code == code, (name, alone.output)
        document = json.loads(alone.stdout)
        verdicts = {f["verdict"] for f in document["functions"]}
        expected = {r["verdict"] for r in rows if r["file"].endswith(name)}
        assert verdicts == expected or document["status"] in expected, (name, document)
    # Several --loss options and --json: every file's full report in one document.
    both = check("--loss", str(folder / "a_right.py"), "--loss", str(sub / "f_right.py"),
                 *data, "--json", "--timeout", "30")  # fmt: skip
    document = json.loads(both.stdout)
    assert both.exit_code == 0 and document["passed"] and len(document["files"]) == 2
    assert all(f["report"]["functions"][0]["verdict"] == "right" for f in document["files"])
    assert document["counts"]["right"] == 2


def test_verbose_shows_each_files_report_and_prints(tmp_path, small_npz):
    folder = tmp_path / "class"
    folder.mkdir()
    write(folder, "a.py", "print('hello from a')\n" + vectorized_with())
    write(folder, "b.py", loop_with())
    quiet = check("--loss", str(folder), "--data", str(small_npz), "--timeout", "30")
    assert quiet.exit_code == 0 and "RIGHT" not in quiet.stdout and "hello" not in quiet.stdout
    loud = check("--loss", str(folder), "--data", str(small_npz), "--verbose", "--timeout", "30")
    assert loud.exit_code == 0 and loud.stdout.count("RIGHT") == 2
    assert "hello from a" in loud.stdout


def test_hostile_code_ends_in_one_error_line(tmp_path, small_npz):
    data = ["--data", str(small_npz)]
    skip = write(tmp_path, "skip.py", "import pytest\npytest.skip('no', allow_module_level=True)\n")
    result = check("--loss", str(skip), *data)
    assert result.exit_code == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: importing") and "Skipped" in last and "line 2" in last
    assert "svmtool/" not in result.stderr
    raises_base = write(
        tmp_path,
        "base.py",
        "class Stop(BaseException):\n    pass\n\n\ndef svm_loss_naive(W, X, y, reg):\n"
        "    raise Stop('halt')\n",
    )
    result = check("--loss", str(raises_base), *data)
    assert result.exit_code == 3 and "Stop: halt" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: svm_loss_naive raised: Stop (")
    odd = write(
        tmp_path,
        "odd.py",
        textwrap.dedent(
            """
            import numpy as np

            class Loss(float):
                def __float__(self):
                    raise RuntimeError("no float for you")

            def svm_loss_naive(W, X, y, reg):
                return Loss(1.0), np.zeros(W.shape)
            """
        ),
    )
    result = check("--loss", str(odd), *data)
    assert result.exit_code == 3, result.output
    assert "RuntimeError: no float for you" in result.stderr
    assert "internal error" not in result.output
    nul = tmp_path / "nul.py"
    nul.write_bytes(b"import numpy as np\nx = 1\x00\n")
    result = check("--loss", str(nul), *data)
    assert result.exit_code == 3
    assert f"{nul}, line 2, column 6" in result.stderr and "None" not in result.stderr


def test_numpy_replaced_by_one_function_does_not_change_the_next(tmp_path, small_npz):
    source = (
        "import numpy as np\n\n\ndef svm_loss_naive(W, X, y, reg):\n"
        "    np.maximum = np.minimum\n    return svm_loss_vectorized(W, X, y, reg)\n"
        + vectorized_with().replace("import numpy as np", "")
    )
    path = write(tmp_path, "patch.py", source)
    result = check("--loss", str(path), "--data", str(small_npz), "--json")
    document = json.loads(result.stdout)
    naive, vectorized = document["functions"]
    assert vectorized["verdict"] == "right", vectorized["findings"]
    assert naive["numpy_replaced"] == ["numpy.maximum"]
    assert any("replaces numpy.maximum" in f for f in naive["findings"])
    assert result.exit_code == 1


def test_usage_errors_of_the_new_options(tmp_path, small_npz):
    path = write(tmp_path, "a.py", vectorized_with())
    data = ["--data", str(small_npz)]
    for args, fragment in [
        (["--timeout", "0"], "'--timeout': must be > 0"),
        (["--memory", "lots"], "'--memory': must be a size"),
        (["--memory", "1M"], "at least 64M"),
        (["--jobs", "0"], "'--jobs': must be >= 1"),
        (["--loss", str(tmp_path), "--plot", str(tmp_path / "k.png")], "one --loss file"),
    ]:
        result = check("--loss", str(path), *data, *args)
        assert result.exit_code in (1, 2) and fragment in result.stderr, (args, result.output)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = check("--loss", str(empty), *data)
    assert result.exit_code == 2 and "holds no .py file" in result.stderr


def test_sweep_delta_applies_with_loss_and_show_kinks_says_it_does_not(tmp_path, small_npz):
    path = write(tmp_path, "a.py", vectorized_with())
    args = ["--loss", str(path), "--data", str(small_npz)]
    result = check(*args, "--sweep-delta", "0,1,10", "--show-kinks")
    assert result.exit_code == 0, result.output
    assert "straddling at the check point" in result.stdout
    assert "At the check point, over all 490 coordinates" in result.stdout
    assert "--show-kinks does not apply with --loss" in result.stderr
    document = json.loads(check(*args, "--sweep-delta", "0,1", "--json").stdout)
    assert [r["at_check_point"]["coordinates"] for r in document["sweep_delta"]] == [490, 490]


# --- the single-file report, read as a student would -------------------------------


def test_report_ends_with_a_verdict_per_function_and_wraps_at_the_width(tmp_path, small_npz):
    from svmtool.cli import out

    source = loop_with(GRAD_REG="reg * W") + vectorized_with().replace("import numpy as np", "")
    path = write(tmp_path, "linear_svm.py", source)
    result = check("--loss", str(path), "--data", str(small_npz))
    assert result.exit_code == 1
    last = result.stdout.rstrip().splitlines()[-2:]
    assert last[0].startswith("svm_loss_naive: WRONG: the factor 2 is missing"), last
    assert last[1] == "svm_loss_vectorized: RIGHT"
    # Only the wrong function shows its tables; --verbose shows every one.
    assert result.stdout.count("┃ status") == 2 and "other shapes: C=7" in result.stdout
    verbose = check("--loss", str(path), "--data", str(small_npz), "--verbose")
    assert verbose.stdout.count("┃ status") == 4
    for line in result.stdout.splitlines():
        if str(tmp_path) not in line:
            assert len(line) <= out.width, line


def test_a_crash_says_its_error_once_and_its_hint_once(tmp_path, small_npz):
    source = "import numpy as np\n\n\ndef svm_loss_naive(W, X, y, reg):\n    return W[10 ** 6]\n"
    path = write(tmp_path, "crash.py", source)
    result = check("--loss", str(path), "--data", str(small_npz))
    assert result.exit_code == 3
    assert result.output.count("is out of bounds for axis 0") == 1, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: svm_loss_naive raised")
    py2 = write(tmp_path, "py2.py", "def svm_loss_naive(W, X, y, reg):\n    return xrange(3)\n")
    result = check("--loss", str(py2), "--data", str(small_npz))
    assert result.exit_code == 3 and result.output.count("xrange is Python 2") == 1


def test_reg_zero_stub_and_hard_coded_n_are_said_plainly(tmp_path, small_npz):
    path = write(tmp_path, "noreg.py", vectorized_with(GRAD_REG="0"))
    result = check("--loss", str(path), "--data", str(small_npz))
    reg0 = result.stdout.split("reg = 50")[0]
    assert "not tested at reg = 0" in reg0 and "2 * reg * W" not in reg0
    stub = write(
        tmp_path,
        "stub.py",
        "import numpy as np\n\n\ndef svm_loss_naive(W, X, y, reg):\n"
        "    loss = 0.0\n    dW = np.zeros(W.shape)\n    return loss, dW\n",
    )
    result = check("--loss", str(stub), "--data", str(small_npz))
    assert "not implemented yet?" in result.stdout and "formula both" not in result.stdout
    # A hard-coded N (CS231n's / 500) works at the dev sample's size only.
    n = json.loads(check("--loss", str(path), "--data", str(small_npz), "--json").stdout)["samples"]
    fixed = write(tmp_path, "fixed.py", vectorized_with(LOSS_N=str(n), GRAD_N=str(n)))
    document = json.loads(check("--loss", str(fixed), "--data", str(small_npz), "--json").stdout)
    (fn,) = document["functions"]
    assert any(f"N = {n} here" in f for f in fn["findings"]), fn["findings"]


def test_tol_help_says_what_is_compared():
    result = runner.invoke(app, ["gradcheck", "--help"])
    assert "8 * eps" in result.stdout and "|numeric - analytic|" in result.stdout
