"""Poll times for free polls, from learned completion times: few polls, placed where predictions end.

A prediction that has finished holds its slot until a poll sees it. For a latency with density f and
survival S, polling at intervals h(t) costs on average ∫ S/h polls and leaves a finished prediction unseen
for ∫ f·h/2; for a given number of polls the wait is least with h proportional to sqrt(S/f), one over the
square root of the hazard rate. So the polls crowd where predictions end, thin out in the early part where
none do, and widen again in a long tail, whatever the distribution's shape; and the number of polls is a
choice (`polls`), not a consequence of how long predictions take.

The density is read off the sorted completion times (each a time inside the interval between the last poll
that missed and the one that saw the prediction done, so not the poll times themselves), smoothed over a
share of the samples that narrows as they grow. Past the last sample the caller continues on its own rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Cells of equal probability the density is read on.
_CELLS = 64
# Polls land on whole steps of the schedule, which costs about half a poll more than the continuous rule.
_PLACEMENT = 0.5


def quantile(ordered: Sequence[float], share: float) -> float:
    """The `share` quantile of sorted samples, linearly interpolated."""
    pos = min(max(share, 0.0), 1.0) * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def sqrt_hazard_schedule(samples: Sequence[float], polls: float, min_interval_s: float) -> tuple[float, ...]:
    """Poll times (since creation) expected to take about `polls` polls per prediction, or () without data.

    The times cover the samples' range up to the share 1 - 1/n; beyond it, the caller's tail rule applies.
    """
    ordered = sorted(samples)
    n = len(ordered)
    if n < 2 or polls <= _PLACEMENT:
        return ()
    edges = [quantile(ordered, j / _CELLS) for j in range(_CELLS + 1)]
    # Smooth the density over about 1/sqrt(n) of the probability on each side: rough samples, wide window.
    half = max(1, round(_CELLS / (2 * math.sqrt(n))))
    floor_s = max(min_interval_s, 1e-9)
    rates, lengths = [], []
    for j in range(_CELLS):
        lo, hi = max(0, j - half), min(_CELLS, j + 1 + half)
        density = ((hi - lo) / _CELLS) / max(edges[hi] - edges[lo], floor_s * (hi - lo))
        survival = 1.0 - (j + 0.5) / _CELLS
        rates.append(math.sqrt(density / survival))  # polls per second, up to the constant below
        lengths.append(edges[j + 1] - edges[j])
    # Expected polls = ∫ S · rate / c = Σ sqrt(f·S)·length / c; pick c to spend `polls`.
    spend = sum(
        rate * (1.0 - (j + 0.5) / _CELLS) * length
        for j, (rate, length) in enumerate(zip(rates, lengths, strict=True))
    )
    if spend <= 0:
        return (ordered[-1],)
    scale = (polls - _PLACEMENT) / spend
    end_cell = _CELLS - max(1, math.ceil(_CELLS / n))
    times: list[float] = []
    mark = 0.0  # polls placed so far, as the cumulative rate; a poll sits at each half-integer crossed
    for j in range(end_cell):
        step = rates[j] * scale * lengths[j]
        next_poll = math.floor(mark - 0.5) + 1.5  # the next half-integer above mark
        while step > 0 and next_poll <= mark + step:
            at = edges[j] + lengths[j] * (next_poll - mark) / step
            if not times or at - times[-1] >= min_interval_s:
                times.append(at)
            next_poll += 1.0
        mark += step
    return tuple(times) or (ordered[-1],)
