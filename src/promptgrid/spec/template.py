"""Prompt templates: `{name}` placeholders and inline `{a|b|c}` variants, parsed once and rendered fast.

`{name}` is a variable (letters, digits and `_`, not starting with a digit). `{a|b|c}` is an inline variant:
an unnamed axis whose values are the options between the bars, named `choice_1`, `choice_2`, ... in the
order they appear (each occurrence its own axis, as in the Dynamic Prompts extension). `{{` and `}}` are
literal braces. A text without braces is a template with no slots that renders as itself.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CHOICE_PREFIX = "choice_"
CHOICE_NAME = re.compile(r"choice_[0-9]+")
# Names a variable may not take: they are the job's own fields or the manifest's template columns.
RESERVED_NAMES = frozenset({"prompt", "seed", "model", "template", "variables"})
_BRACE = re.compile(r"[{}]")
# Distinct templates kept parsed: a grid with a template per row re-reads each only once per batch.
_PARSED_CACHE = 65_536


@dataclass(frozen=True)
class TemplateProblem:
    """A syntax problem in a template: where it is (1-based character) and what is wrong."""

    at: int
    message: str

    def __str__(self) -> str:
        return f"character {self.at}: {self.message}"


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text around slots, each slot a variable or an inline variant's axis."""

    text: str
    literals: tuple[str, ...]  # one more than slots: the text before, between and after them
    slots: tuple[str, ...]  # the variable or choice name filling each slot, in order
    sources: tuple[str, ...]  # each slot as written, e.g. "{subject}" or "{red|green}"
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # choice_N -> its options
    problems: tuple[TemplateProblem, ...] = ()

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every name the slots use, once each, in order of first appearance."""
        return tuple(dict.fromkeys(self.slots))

    @cached_property
    def variables(self) -> tuple[str, ...]:
        """The named placeholders: names that need values from the spec or the grid."""
        return tuple(name for name in self.names if name not in self.choices)

    @cached_property
    def format_string(self) -> str:
        """The template as a %-format string, one `%s` per slot: rendering is then one C-level call."""
        escaped = [literal.replace("%", "%%") for literal in self.literals]
        return "%s".join(escaped)

    @property
    def literal_text(self) -> str:
        return "".join(self.literals)

    def occurrences(self, name: str) -> int:
        return self.slots.count(name)

    def render(self, values: Mapping[str, str]) -> str:
        """The prompt with every slot filled; KeyError names a slot without a value."""
        return self.format_string % tuple(values[name] for name in self.slots)

    def render_partial(self, values: Mapping[str, str]) -> str:
        """The text with the slots that have a value filled and the others left as written."""
        parts = [self.literals[0]]
        for index, name in enumerate(self.slots):
            filled = values.get(name)
            parts.append(self.sources[index] if filled is None else filled)
            parts.append(self.literals[index + 1])
        return "".join(parts)


def has_braces(text: str) -> bool:
    return "{" in text or "}" in text


@lru_cache(maxsize=_PARSED_CACHE)
def parse_template(text: str) -> Template:
    """Parse `text`; syntax problems are collected on the result (the text around them kept literal)."""
    literals, slots, sources, problems = [], [], [], []
    choices: dict[str, tuple[str, ...]] = {}
    current: list[str] = []
    position = 0
    while True:
        found = _BRACE.search(text, position)
        if found is None:
            current.append(text[position:])
            break
        at = found.start()
        current.append(text[position:at])
        if text.startswith("{{", at) or text.startswith("}}", at):
            current.append(text[at])
            position = at + 2
            continue
        if text[at] == "}":
            problems.append(TemplateProblem(at + 1, "'}' closes nothing (write }} for a literal brace)"))
            current.append("}")
            position = at + 1
            continue
        end = text.find("}", at + 1)
        inner_open = text.find("{", at + 1)
        if end < 0 or 0 <= inner_open < end:
            problems.append(TemplateProblem(at + 1, "'{' is never closed (write {{ for a literal brace)"))
            current.append("{")
            position = at + 1
            continue
        content = text[at + 1 : end]
        name = _slot_name(content, choices, at + 1, problems)
        position = end + 1
        if name is None:
            current.append(text[at:position])
            continue
        literals.append("".join(current))
        current = []
        slots.append(name)
        sources.append(text[at:position])
    literals.append("".join(current))
    return Template(text, tuple(literals), tuple(slots), tuple(sources), choices, tuple(problems))


def _slot_name(
    content: str, choices: dict[str, tuple[str, ...]], at: int, problems: list[TemplateProblem]
) -> str | None:
    """The name a `{content}` slot fills (a new choice_N for inline variants), or None when it is bad."""
    if "|" in content:
        name = f"{CHOICE_PREFIX}{len(choices) + 1}"
        choices[name] = tuple(content.split("|"))
        return name
    name = content.strip()
    if CHOICE_NAME.fullmatch(name):
        problems.append(
            TemplateProblem(at, f"{{{name}}} is the name of an inline variant; name it otherwise")
        )
        return None
    if NAME.fullmatch(name):
        return name
    shown = "{" + content + "}"
    problems.append(
        TemplateProblem(
            at,
            f"{shown} is not a placeholder: a name is letters, digits and _ (not starting with a digit), "
            "variants are {a|b|c}, and {{ }} write literal braces",
        )
    )
    return None


def variable_keys(keys: Iterable[str], input_names: Collection[str]) -> tuple[str, ...]:
    """The sweep and zip keys that are template variables: every key the models do not take as an input.

    `input_names` is whatever the spec's models accept, so the split follows the models' own schemas.
    """
    return tuple(key for key in dict.fromkeys(keys) if key not in input_names and key != "seed")


def variable_name_problem(name: object) -> str | None:
    """Why `name` cannot be a template variable, or None when it can."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return "nor a variable name (letters, digits and _, not starting with a digit)"
    if name in RESERVED_NAMES:
        return f"and {name!r} is reserved (it cannot be a variable either)"
    if CHOICE_NAME.fullmatch(name):
        return f"and {name!r} is kept for inline variants {{a|b}} (named choice_1, choice_2, ...)"
    return None


def variable_values(name: str, values: Iterable[object]) -> tuple[str, ...]:
    """A variable's values as the text they put into a prompt: strings, or numbers as YAML wrote them."""
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{name}[{index}]: {value!r} is not text or a number (quote it)")
        texts.append(value if isinstance(value, str) else str(value))
    return tuple(texts)
