"""The spec's `split:` key: the share of jobs each dataset split gets, such as `{train: 0.9, test: 0.1}`.

A job's split follows from its id alone (see promptgrid.export.splits), so it stays put as the grid grows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator

# The names Hugging Face `datasets` accepts for a split (its `_split_re`): words joined by dots.
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
_TOLERANCE = 1e-6


def split_name_problem(name: str) -> str | None:
    """Why `name` cannot be a split's name, or None."""
    if not SPLIT_NAME.match(name):
        return f"{name!r} is not a split name (letters, digits and _, parts joined by dots: train, test)"
    return None


def parse_split(value: Any) -> dict[str, float] | None:
    """`{train: 0.9, test: 0.1}`: split names to positive shares that add up to 1; None for no key."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"{value!r} is not a mapping of split names to shares, such as {{train: 0.9, test: 0.1}}"
        )
    shares: dict[str, float] = {}
    for name, share in value.items():
        problem = split_name_problem(str(name))
        if problem:
            raise ValueError(problem)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ValueError(f"split {name}: {share!r} is not a share above 0 and at most 1")
        shares[str(name)] = float(share)
    if not math.isclose(sum(shares.values()), 1.0, abs_tol=_TOLERANCE):
        raise ValueError(f"the split shares add up to {sum(shares.values()):g}, not 1")
    return shares


SplitShares = Annotated[dict[str, float] | None, BeforeValidator(parse_split)]
