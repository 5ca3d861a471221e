"""The README and docs/ show only commands and options that exist, and links that resolve.

Every `svmtool ...` line of README.md and docs/*.md (in code blocks: `$ svmtool ...` lines,
`svmtool ...` at the start of a line with its backslash or `[...]` continuation lines; and
inline code spans) is checked against the real Click command tree of the app: the command path
exists and every option named exists for that command (values such as DATA or FILE are free).
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from svmtool.cli import app

# Typer 0.29 vendors Click (typer._click): commands are told apart by what they hold.
Command = Any

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_PAGES = ["download", "train", "evaluate", "predict", "gradcheck", "visualize", "cache"]

FENCE = re.compile(r"^\s*(```|~~~)")
ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")
OPTION = re.compile(r"^--?[A-Za-z][\w-]*")
INLINE = re.compile(r"(?<!`)`(svmtool(?: [^`]*)?)`(?!`)")
# Prose names an option without its value (`train --lr`): inline spans get no value check.
INLINE_SPAN = "(inline)"
NO_SUCH_OPTION = re.compile(r"^Error: No such option: (--?[\w-]+)")


def command_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, command, the output line after it or '') for every svmtool line of text."""
    found: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not FENCE.match(lines[i]):
            found += [(i + 1, m.group(1), INLINE_SPAN) for m in INLINE.finditer(lines[i])]
            i += 1
            continue
        end = next((k for k in range(i + 1, len(lines)) if FENCE.match(lines[k])), len(lines))
        found += _block_commands(lines[i + 1 : end], first=i + 2)
        i = end + 1
    return found


def _block_commands(block: list[str], first: int) -> list[tuple[int, str, str]]:
    # A block with `$ ` prompts holds commands and their output; one without holds commands
    # (synopses) only, continued by backslashes or by indented `[...]` lines.
    prompted = any(line.startswith("$ ") for line in block)
    found = []
    k = 0
    while k < len(block):
        line = block[k]
        start = k
        if prompted:
            if not line.startswith("$ "):
                k += 1
                continue
            line = line[2:]
        line = ENV_PREFIX.sub("", line)
        if line.startswith("python -m svmtool"):
            line = line[len("python -m ") :]
        if not re.match(r"svmtool(\s|$)", line):
            k += 1
            continue
        parts = [line]
        while k + 1 < len(block) and (
            parts[-1].rstrip().endswith("\\")
            or (not prompted and re.match(r"^\s+\[", block[k + 1]))
        ):
            parts[-1] = parts[-1].rstrip().removesuffix("\\")
            k += 1
            parts.append(block[k])
        after = block[k + 1] if prompted and k + 1 < len(block) else ""
        found.append((first + start, " ".join(p.strip() for p in parts), after))
        k += 1
    return found


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in a synopsis: words are enough
        return command.split()


def _option_names(command: Command, help_names: set[str]) -> set[str]:
    names = set(help_names)
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _takes_value(command: Command, name: str) -> bool:
    for param in command.params:
        if param.param_type_name == "option" and name in param.opts:
            return not param.is_flag and not param.count
    return False


def problems(command_line: str, after: str, root: Command) -> list[str]:
    """What is wrong with one documented command line: [] when every name in it exists."""
    help_names = set(root.context_settings.get("help_option_names", ["--help"]))
    tokens = _tokens(command_line)[1:]
    commands = [root]
    path = "svmtool"
    while tokens and hasattr(commands[0], "commands") and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        group = commands[0]
        if name in group.commands:
            commands = [group.commands[name]]
        elif name.isupper():  # `svmtool COMMAND --help`: what follows must hold for them all
            commands = list(group.commands.values())
        else:
            return [f"{path}: no command {name!r}"]
        path += f" {name}"
    intended = NO_SUCH_OPTION.match(after)
    found = []
    for index, token in enumerate(tokens):
        # `[--cache/--no-cache]`, `[--model PATH | --weights W.npy]`: each name on its own.
        words = token.strip("[]|").split("|") if token.lstrip("[").startswith("-") else [token]
        for piece in [part for word in words for part in word.split("/")]:
            match = OPTION.match(piece.strip("[]"))
            if not match:
                continue
            name = match.group(0)
            if intended and name == intended.group(1):
                # The example shows the error for a made-up option: it must stay made up.
                if any(name in _option_names(c, help_names) for c in commands):
                    found.append(f"{path}: {name} is shown as unknown, but it exists")
                continue
            for command in commands:
                if name not in _option_names(command, help_names):
                    found.append(f"{path}: no option {name}")
                elif after != INLINE_SPAN and _takes_value(command, name) and "=" not in piece:
                    rest = tokens[index + 1 :]
                    value = rest[0].strip("[]") if rest else ""
                    if not value or value.startswith("--") or value == "|":
                        found.append(f"{path}: {name} needs a value")
    return found


@pytest.fixture(scope="module")
def root() -> Command:
    return typer.main.get_command(app)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_names_what_exists(path: Path, root) -> None:
    bad = []
    for number, command, after in command_lines(path.read_text(encoding="utf-8")):
        bad += [f"{path.name}:{number}: {p}  [{command}]" for p in problems(command, after, root)]
    assert not bad, "\n".join(bad)


def test_the_docs_show_every_command(root) -> None:
    # The parser finds the lines (a parser that found none would pass everything above).
    assert hasattr(root, "commands")
    for page in COMMAND_PAGES:
        lines = command_lines((ROOT / "docs" / f"{page}.md").read_text(encoding="utf-8"))
        assert any(command.split()[1:2] == [page] for _, command, _ in lines), page
    readme = command_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    shown = {command.split()[1] for _, command, _ in readme if len(command.split()) > 1}
    assert set(root.commands) <= shown


SAMPLE = """\
Some prose with `svmtool train --data synthetic` and `gradcheck --loss`, `svmtool train --lr`.

```
$ svmtool train --itres 5
Error: No such option: --itres (Possible options: --features, --iters, --reg)
$ svmtool train --iters 5 \\
    --frobnicate
svmtool evaluate --not-a-command-here (an output line of the command above)
$ svmtool predict --top 3 example.png   # a comment --not-an-option
$ svmtool train --iters five
Error: No such option: --iters
```

```
svmtool evaluate [--split test|val|train] [--cache/--no-cache]
                 [--model svm_model.npz] [--wobble N]
svmtool trian --data synthetic
svmtool cache list --json
svmtool COMMAND --help
svmtool train --lr
```
"""


def test_a_made_up_option_or_command_fails(root) -> None:
    lines = command_lines(SAMPLE)
    assert [number for number, _, _ in lines] == [1, 1, 4, 6, 9, 10, 15, 17, 18, 19, 20]
    report = [problems(command, after, root) for _, command, after in lines]
    assert report == [
        [],  # inline prose
        [],  # inline: an option named without its value
        [],  # an option shown as unknown, and it is
        ["svmtool train: no option --frobnicate"],  # found on a continuation line
        [],  # shell comments are not options
        ["svmtool train: --iters is shown as unknown, but it exists"],
        ["svmtool evaluate: no option --wobble"],  # on a synopsis' next line
        ["svmtool: no command 'trian'"],
        [],
        [],  # COMMAND: any command; --help is everywhere
        ["svmtool train: --lr needs a value"],
    ]


def test_the_readme_starts_with_set_up_tests_and_the_main_job() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail into docs/"
    first_screen = "\n".join(lines[:45])
    blocks = re.findall(r"```\n(.*?)```", first_screen, re.S)
    setup = [b for b in blocks if 'pip install -e ".[dev]"' in b]
    assert setup and "-m venv" in setup[0] and "python -m pytest -q" in setup[0]
    assert "svmtool train --download" in first_screen and "--from-file" in first_screen
    # CI installs and tests exactly as the README says.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[dev]"' in ci and "python -m pytest -q" in ci


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_link_between_the_pages_resolves(path: Path) -> None:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            bad.append(f"{path.name}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            bad.append(f"{path.name}: {target}: no such heading")
    assert not bad, "\n".join(bad)


CODE_PATH = re.compile(r"^(?:svmtool|scripts|tests|docs|\.ci)/[\w./-]*$")
DOTTED = re.compile(r"^svmtool(?:\.\w+)+$")


def _inline_spans(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_file_and_name_of_the_code_the_docs_point_at_exists(path: Path) -> None:
    # "Where the code is" and the pages name modules; a module moved must take its name along.
    bad = []
    for span in _inline_spans(path):
        if CODE_PATH.match(span) and not (ROOT / span).exists():
            bad.append(f"{path.name}: {span}: no such file or folder")
        elif DOTTED.match(span):
            parts = span.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    target: Any = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for name in parts[cut:]:
                        target = getattr(target, name)
                except AttributeError:
                    bad.append(f"{path.name}: {span}: no such name")
                break
    assert not bad, "\n".join(bad)


def test_a_moved_module_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("`svmtool/nowhere.py`, `svmtool.io.dataset.nothing`, `svmtool/cli.py`\n")
    with pytest.raises(AssertionError, match=re.escape("nowhere.py: no such file")) as failure:
        test_every_file_and_name_of_the_code_the_docs_point_at_exists(page)
    assert "svmtool.io.dataset.nothing: no such name" in str(failure.value)
    assert "cli.py" not in str(failure.value)
