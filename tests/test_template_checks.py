"""Template problems are found before anything is sent, one message each, naming the spec line or grid row."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.defaults import MAX_PROMPT_CHARS
from promptgrid.errors import InvalidInput
from promptgrid.spec.load import load_spec
from tests.support.processes import promptgrid

LONG = "x" * (MAX_PROMPT_CHARS // 2 + 1)
# Every kind of problem at once: each line below is expected exactly once, nothing else.
SPEC = f"""\
model: stable-diffusion-3-5-large
prompts: grid.csv
template: "a {{subject}} in {{place}}, {{cfg}}, {{mood}}, {{nothing}}"
sweep:
  subject: {{file: empty.txt}}
  place: {{file: missing.txt}}
  colour: [red]
  word: ["{LONG}"]
  blank: ["", " "]
"""
GRID = """\
prompt,mood
a {thing} fox,calm
a {cfg} fox,calm
a {red|green fox,calm
,
{word} {word},calm
{blank}{ |},calm
"""
EXPECTED = [
    "spec.yaml line 5: sweep.subject: file empty.txt has no values (every line is blank or a # comment)",
    "spec.yaml line 6: sweep.place: file missing.txt does not exist",
    "spec.yaml line 3: template: placeholder {cfg} is the name of an input",
    "spec.yaml line 3: template: placeholder {nothing} has no values",
    "spec.yaml line 7: sweep.colour: 'colour' is not an input that can be swept",
    "grid.csv line 2, column prompt: placeholder {thing} has no values",
    "grid.csv line 3, column prompt: placeholder {cfg} is the name of an input",
    "grid.csv line 4, column prompt: character 3: '{' is never closed",
    "grid.csv line 5, column mood: empty, and no sweep or zip gives {mood} values",
    f"grid.csv line 6, column prompt: renders prompts of up to {2 * len(LONG) + 1:,} characters",
    "grid.csv line 7, column prompt: renders an empty prompt (with blank='', choice_1=' ')",
]


def write(folder: Path, spec: str, **files: str) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(spec), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        load_spec(path)
    assert caught.value.total == len(caught.value.problems)
    return caught.value.problems


def test_every_problem_is_reported_once_in_one_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # paths show relative to where the command runs
    found = problems(write(tmp_path, SPEC, **{"grid.csv": GRID, "empty.txt": "# nothing yet\n\n"}))
    assert len(found) == len(EXPECTED), "\n".join(found)
    for expected in EXPECTED:
        assert sum(expected in problem for problem in found) == 1, f"{expected!r} in\n" + "\n".join(found)


@pytest.mark.integration  # the installed command, in a process of its own
def test_the_command_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    write(tmp_path, SPEC, **{"grid.csv": GRID, "empty.txt": ""})
    done = promptgrid("run", "spec.yaml", "--dry-run", cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.removeprefix("error: ").strip().splitlines()
    assert len(lines) == len(EXPECTED)
    assert all(sum(expected in line for line in lines) == 1 for expected in EXPECTED)


ALONE = {
    "placeholder without values": ("template: 'a {animal}'\n", "placeholder {animal} has no values"),
    "unused variable": (
        "template: 'a fox'\nsweep: {animal: [fox]}\n",
        "no placeholder {animal} in the template or the grid's prompts uses it",
    ),
    "missing wildcard file": (
        "template: 'a {animal}'\nsweep: {animal: {file: animals.txt}}\n",
        "animals.txt does not exist",
    ),
    "sample larger than its list": (
        "template: 'a {animal}'\nsweep: {animal: {sample: 3, from: [fox, owl]}}\n",
        "sample 3 of 2 values",
    ),
    "collision with an input": (
        "template: 'a fox, {steps} steps'\n",
        "placeholder {steps} is the name of an input",
    ),
    "reserved name": ("template: 'a {seed}'\n", "placeholder {seed} is a reserved name"),
    "too long": (f"template: '{{a}} {{a}}'\nsweep: {{a: [fox, '{LONG}']}}\n", "renders prompts of up to"),
    "empty": ("template: '{a}'\nsweep: {a: [' ', fox]}\n", "renders an empty prompt (with a=' ')"),
    "variable named like a variant": (
        "template: '{a|b}'\nsweep: {choice_1: [x]}\n",
        "kept for inline variants",
    ),
    "placeholder named like a variant": (
        "template: '{choice_1} {a|b}'\n",
        "is the name of an inline variant",
    ),
    "neither grid nor template": ("seeds: [1]\n", "prompts: is required"),
    "bad variable name": ("template: 'a'\nsweep: {'two words': [x]}\n", "nor a variable name"),
}


@pytest.mark.parametrize("case", ALONE)
def test_each_problem_alone_is_one_message(tmp_path: Path, case: str) -> None:
    text, expected = ALONE[case]
    (message,) = problems(write(tmp_path, "model: stable-diffusion-3-5-large\n" + text))
    assert expected in message and "spec.yaml" in message


def test_a_grid_without_a_prompt_column_needs_the_template(tmp_path: Path) -> None:
    spec = "model: stable-diffusion-3-5-large\nprompts: grid.csv\n"
    (message,) = problems(write(tmp_path, spec, **{"grid.csv": "subject\nfox\n"}))
    assert "no 'prompt' column" in message
    load_spec(write(tmp_path, spec + "template: 'a {subject}'\n"))


def test_the_dry_run_shows_the_count_and_rendered_prompts(tmp_path: Path) -> None:
    spec = "model: stable-diffusion-3-5-large\ntemplate: 'a {animal} at {dawn|dusk}'\n"
    spec += "sweep: {animal: [fox, owl]}\n"
    result = CliRunner().invoke(app, ["run", str(write(tmp_path, spec)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "template: 4 distinct prompts rendered" in result.output
    assert "jobs: 4 (1 per prompt; 0 identical jobs collapsed)" in result.output
    shown = result.output.split("rendered prompts, the first few:\n")[1].split("sample jobs:")[0]
    assert shown.splitlines() == [
        "  'a fox at dawn'",
        "  'a fox at dusk'",
        "  'a owl at dawn'",
        "  'a owl at dusk'",
    ]
