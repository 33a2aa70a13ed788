"""What README.md and ``purerigl train --help`` say about the command is what the code does.

- the default run directory: the template in README.md and in ``--out``'s help, filled with a run's
  time, dataset, method, format and sparsity, is the directory that ``purerigl train`` creates;
- ``--gamma-sal``: the thresholds its help states (0: no ablation; below 1, ``tau = ...`` of K_ref;
  from 1 on, a count ``tau = ...``) are evaluated and compared with the code's
  :func:`purerigl.dst.srigl.ablation_threshold`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from purerigl.cli.main import main
from purerigl.cli.train import train as train_command
from purerigl.dst.srigl import ablation_threshold
from test_cli_train import CLEAN_ENV

README = Path(__file__).resolve().parents[1] / "README.md"


def _rendered_help(option: str) -> str:
    """The block of ``purerigl train --help`` that describes ``option`` (as printed, wrapped)."""
    result = CliRunner().invoke(main, ["train", "--help"], env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    block, inside = [], False
    for line in result.output.splitlines():
        if line.startswith("  --"):
            inside = line.split()[0].split("/")[0] == option
        if inside:
            block.append(line)
    assert block, f"{option} is not in purerigl train --help"
    return "\n".join(block)


def _squeeze(text: str) -> str:
    """``text`` without any whitespace: click wraps help lines anywhere, even inside a word."""
    return "".join(text.split())


def _templates(text: str) -> list[str]:
    return re.findall(r"runs/<time>[\w<>.-]*", text)


def _fill(template: str, **values: str) -> str:
    """A regular expression for the directory named by ``template``: every ``<name>`` replaced by
    ``values[name]`` (a regular expression), the rest literal; an unknown placeholder is a KeyError."""
    parts = re.split(r"<(\w+)>", template)
    return "".join(re.escape(p) if i % 2 == 0 else values[p] for i, p in enumerate(parts))


def test_run_directory_is_named_as_readme_and_help_say(tmp_path, monkeypatch):
    readme = _templates(README.read_text(encoding="utf-8"))
    helped = _templates(_squeeze(_rendered_help("--out")))
    assert len(readme) == 1 and len(helped) == 1, (readme, helped)
    assert readme == helped, "README.md and purerigl train --out's help give different run-directory names"

    monkeypatch.chdir(tmp_path)  # the default directory is relative: runs/...
    argv = ["train", "--no-progress", "--epochs", "1", "--hidden", "16", "--method", "set", "--format", "condensed",
            "--sparsity", "0.8"]
    result = CliRunner().invoke(main, argv, env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    made = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").iterdir()]
    assert len(made) == 1, made
    pattern = _fill(readme[0], time=r"\d{8}-\d{6}", dataset="digits", method="set", format="condensed",
                    sparsity=re.escape("0.8"))
    assert re.fullmatch(pattern, made[0]), f"the run went to {made[0]}, the documentation says {readme[0]}"


def _expression_after(text: str, phrase: str) -> str:
    """The expression ``E`` of the first ``tau = E`` after ``phrase`` in ``text``: up to the first
    ``;`` or sentence-ending ``.`` outside parentheses."""
    start = text.index("tau = ", text.index(phrase)) + len("tau = ")
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        depth += (c == "(") - (c == ")")
        if depth == 0 and (c == ";" or (c == "." and (i + 1 == len(text) or text[i + 1].isspace()))):
            return text[start:i].strip()
    return text[start:].strip()


def _tau(expression: str, gamma_sal: Fraction, k_ref: int) -> int:
    """The help's formula evaluated exactly (gamma_sal as the decimal it is written as)."""
    names = {"max": max, "floor": math.floor, "ceil": math.ceil, "gamma_sal": gamma_sal, "K_ref": k_ref}
    return int(eval(expression, {"__builtins__": {}}, names))  # noqa: S307 (our own help text)


def test_gamma_sal_help_states_the_thresholds_the_code_uses():
    param = next(p for p in train_command.params if p.name == "gamma_sal")
    text = " ".join(param.help.split())
    assert _squeeze(text) in _squeeze(_rendered_help("--gamma-sal")), "the help checked here is not what --help prints"
    assert re.search(r"(?<![\d.])0: no ablation", text), text
    below, count = _expression_after(text, "below 1"), _expression_after(text, "from 1 on")
    assert "count" in text[text.index("from 1 on"):], "the help must say that values >= 1 are counts"
    for k_ref in (1, 3, 10, 37):
        assert ablation_threshold(0.0, k_ref) == 0
        for g in ("0.05", "0.3", "0.5", "0.7", "0.95", "0.999"):
            assert ablation_threshold(float(g), k_ref) == _tau(below, Fraction(g), k_ref), (g, k_ref, below)
        for g in ("1", "1.5", "2", "7.2"):  # a count: the same whatever K_ref is
            assert ablation_threshold(float(g), k_ref) == _tau(count, Fraction(g), k_ref), (g, k_ref, count)


@pytest.mark.parametrize("text, phrase, want", [
    ("below 1 x: tau = max(1, floor(a * b)); from 1 on", "below 1", "max(1, floor(a * b))"),
    ("from 1 on a count: tau = ceil(gamma_sal).", "from 1 on", "ceil(gamma_sal)"),
    ("from 1 on: tau = ceil(g). Then", "from 1 on", "ceil(g)"),
])
def test_expression_after(text, phrase, want):
    assert _expression_after(text, phrase) == want
