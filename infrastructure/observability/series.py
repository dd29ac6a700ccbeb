"""Summaries of Prometheus (and Loki metric) query results, sized for people and planners.

Pure functions, no HTTP. A matrix becomes per-series statistics (first, last, min, max, mean,
a least-squares trend) plus values thinned to a point budget; a vector becomes values,
largest first when it must be cut. Whatever is left out is said in `cut`, so a reader never
mistakes a partial answer for a whole one.

Also here, because both query languages share them: splitting an alert expression
`lhs > 0.5` into its left side and threshold (`split_comparison`), and finding when such a
condition started to hold (`summarise_breach`).
"""

from __future__ import annotations

import math
import operator as op
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Prometheus refuses a range query with more than 11 000 intervals per series (api.go).
MAX_INTERVALS = 11_000
# A trend is "flat" when the least-squares line changes by less than this share of the
# series' own range (max - min) over the window: noise around a level, or a single spike,
# moves the fitted line far less than its range, while a ramp (the whole range) or a step
# anywhere but the last twentieth of the window moves it by more. A quarter keeps the noise
# of short series (a few dozen points) flat.
TREND_TOLERANCE = 0.25
# The token in cut notes that the caller replaces with its query (see fill_query).
QUERY_PLACEHOLDER = "<query>"

Point = tuple[float, float]


# --- formatting ----------------------------------------------------------------------------


def compact(value: float | None) -> str:
    """3 significant digits, with k/M/G/T for large magnitudes: 838860800 -> "839M"."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    rounded = float(f"{value:.3g}")  # round first, so 999999 becomes 1M and not 1e+03k
    magnitude = abs(rounded)
    if magnitude < 1e15:
        for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if magnitude >= factor:
                return f"{rounded / factor:.3g}{suffix}"
    return f"{rounded:.3g}"


def signed(value: float) -> str:
    text = compact(value)
    return text if text.startswith("-") else f"+{text}"


def format_duration(seconds: float) -> str:
    """13s, 14m, 1h30m, 2d3h; fractions only below 10 s."""
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.3g}s"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs}s" if secs else f"{minutes}m"


def iso(seconds: float) -> str:
    """ISO 8601 UTC, with milliseconds only when the time has them."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def short_time(seconds: float, reference: float) -> str:
    """HH:MM:SSZ when on the same UTC day as `reference`, else the full ISO time."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    if moment.date() == datetime.fromtimestamp(reference, tz=UTC).date():
        return moment.strftime("%H:%M:%SZ")
    return iso(seconds)


def format_labels(labels: Mapping[str, str]) -> str:
    """`name{a="x", b="y"}` as Prometheus prints a series; `{}` for none."""
    name = labels.get("__name__", "")
    rest = ", ".join(
        f"{key}={_quote(value)}" for key, value in sorted(labels.items()) if key != "__name__"
    )
    return f"{name}{{{rest}}}" if rest or not name else name


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def fill_query(notes: Sequence[str], query: str) -> list[str]:
    """Cut notes with QUERY_PLACEHOLDER replaced by the query they are about."""
    return [note.replace(QUERY_PLACEHOLDER, query) for note in notes]


# --- step ----------------------------------------------------------------------------------


def choose_step(
    window_seconds: float, max_points: int, requested_step: float | None
) -> tuple[float, str | None]:
    """Step (seconds) so that window/step + 1 <= max_points; if the requested step would give
    more points, widen it and return a note for `cut` saying so (e.g. "step widened from 5s to
    13s to stay within 300 points per series"). Never below 1 s unless the window itself is
    tiny; never more than 11000 intervals (Prometheus's limit)."""
    if not math.isfinite(window_seconds) or window_seconds <= 0:
        raise ValueError(f"the window must be positive, not {window_seconds!r}")
    max_points = max(2, int(max_points))
    needed = max(window_seconds / (max_points - 1), window_seconds / MAX_INTERVALS)
    # Below a second only when the whole window is under a second (then one step spans it).
    floor = min(1.0, window_seconds)
    # Whole seconds read better and align with scrape intervals; the epsilon keeps 12.0000001
    # (float noise) at 12 s.
    smallest = max(floor, float(math.ceil(needed - 1e-9)) if needed > 1 else needed)
    if requested_step is None:
        return smallest, None
    if not math.isfinite(requested_step) or requested_step <= 0:
        return smallest, (
            f"step {requested_step!r} is not a positive number of seconds;"
            f" used {format_duration(smallest)}"
        )
    if requested_step >= needed and requested_step >= floor:
        return requested_step, None
    if requested_step >= needed:
        return floor, (
            f"step raised from {format_duration(requested_step)} to"
            f" {format_duration(floor)} (the smallest step used)"
        )
    return smallest, (
        f"step widened from {format_duration(requested_step)} to {format_duration(smallest)}"
        f" to stay within {max_points} points per series"
    )


# --- statistics ----------------------------------------------------------------------------


def linear_fit(values: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) like Prometheus's predict_linear; None with fewer than
    2 points. `intercept` is the line's value at t = 0, so y(t) = slope * t + intercept.
    Non-finite values are ignored; None too when all times are equal."""
    points = [(t, v) for t, v in values if math.isfinite(t) and math.isfinite(v)]
    if len(points) < 2:
        return None
    # Centred sums: with t around 1.7e9 the textbook formula loses most of its digits.
    mean_t = math.fsum(t for t, _ in points) / len(points)
    mean_v = math.fsum(v for _, v in points) / len(points)
    covariance = math.fsum((t - mean_t) * (v - mean_v) for t, v in points)
    variance = math.fsum((t - mean_t) ** 2 for t, _ in points)
    if variance == 0:
        return None
    slope = covariance / variance
    return slope, mean_v - slope * mean_t


def trend_of(points: Sequence[Point], slope: float | None) -> str:
    """rising, falling or flat: the fitted change over the window against TREND_TOLERANCE of
    the series' range."""
    if slope is None or len(points) < 2:
        return "flat"
    values = [v for _, v in points]
    spread = max(values) - min(values)
    level = max(abs(v) for v in values)
    if spread == 0 or spread <= 1e-12 * level:  # float noise on a constant
        return "flat"
    fitted_change = slope * (points[-1][0] - points[0][0])
    if abs(fitted_change) < TREND_TOLERANCE * spread:
        return "flat"
    return "rising" if fitted_change > 0 else "falling"


def _parse_value(text: Any) -> float | None:
    """Prometheus sends sample values as strings ("0.5", "NaN", "+Inf"); None if not a number."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def parse_points(values: Sequence[Sequence[Any]]) -> tuple[list[Point], int]:
    """The finite (time, value) points of a series in time order, and how many were not
    finite (NaN, ±Inf) or not numbers."""
    points: list[Point] = []
    skipped = 0
    for pair in values:
        if len(pair) < 2:
            skipped += 1
            continue
        at, value = _parse_value(pair[0]), _parse_value(pair[1])
        if at is None or value is None or not math.isfinite(value) or not math.isfinite(at):
            skipped += 1
            continue
        points.append((at, value))
    points.sort(key=lambda point: point[0])
    return points, skipped


def thin(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most max_points of `points`, keeping the first, last, min and max points and spreading
    the rest evenly."""
    count = len(points)
    if count <= max_points:
        return list(points)
    values = [v for _, v in points]
    lowest = min(range(count), key=values.__getitem__)
    highest = max(range(count), key=values.__getitem__)
    keep: list[int] = []
    for index in (0, count - 1, highest, lowest):  # by priority, for budgets below 4
        if index not in keep:
            keep.append(index)
    keep = keep[: max(2, max_points)]
    chosen = set(keep)
    others = [index for index in range(count) if index not in chosen]
    room = max_points - len(chosen)
    if room > 0:
        # The middle of each of `room` equal buckets: distinct, since room <= len(others).
        chosen.update(others[int((i + 0.5) * len(others) / room)] for i in range(room))
    return [points[index] for index in sorted(chosen)]


def series_stats(points: Sequence[Point]) -> dict[str, Any]:
    """first/last/min/max/mean/change/slope/trend of finite, time-ordered points."""
    if not points:
        empty: dict[str, Any] = dict.fromkeys(
            ("first", "last", "min", "max", "mean", "change", "slope_per_second"), None
        )
        return {**empty, "trend": "flat", "first_at": None, "last_at": None}
    values = [v for _, v in points]
    fit = linear_fit(list(points))
    slope = fit[0] if fit else None
    return {
        "first": values[0],
        "last": values[-1],
        "min": min(values),
        "max": max(values),
        "mean": math.fsum(values) / len(values),
        "change": values[-1] - values[0],
        "slope_per_second": slope,
        "trend": trend_of(points, slope),
        "first_at": iso(points[0][0]),
        "last_at": iso(points[-1][0]),
    }


def _series_entry(
    metric: Mapping[str, str], points: list[Point], skipped: int, max_points: int
) -> tuple[dict[str, Any], bool]:
    """One series' summary and whether its values were thinned."""
    shown = thin(points, max_points)
    entry: dict[str, Any] = {
        "labels": dict(metric),
        "points": len(points),
        **series_stats(points),
        "values": [[at, value] for at, value in shown],
    }
    if skipped:
        entry["non_finite"] = skipped
    return entry, len(shown) < len(points)


def series_line(entry: Mapping[str, Any]) -> str:
    """`{labels} last=… min=… max=… trend=rising (+12.3 over 1h)`."""
    labels = format_labels(entry["labels"])
    skipped = entry.get("non_finite", 0)
    if entry["last"] is None:
        return f"{labels} no finite values ({skipped} NaN/Inf)"
    span = _seconds_between(entry["first_at"], entry["last_at"])
    line = (
        f"{labels} last={compact(entry['last'])} min={compact(entry['min'])}"
        f" max={compact(entry['max'])} trend={entry['trend']}"
        f" ({signed(entry['change'])} over {format_duration(span)})"
    )
    return f"{line}; {skipped} NaN/Inf skipped" if skipped else line


def _seconds_between(first: str, last: str) -> float:
    parse = datetime.fromisoformat
    return (
        parse(last.replace("Z", "+00:00")) - parse(first.replace("Z", "+00:00"))
    ).total_seconds()


def _text(lines: list[str], cut: list[str]) -> str:
    return "\n".join([*(lines or ["no series"]), *(f"cut: {note}" for note in cut)])


# --- matrix and vector ---------------------------------------------------------------------


def summarise_matrix(
    result: list[dict[str, Any]], *, max_series: int, max_points: int, rank: str = "last"
) -> tuple[str, dict[str, Any]]:
    """`result` is Prometheus's (or Loki's) matrix result:
    [{"metric": {...}, "values": [[<sec float>, "<str>"], ...]}]. Returns (text, data).

    Per series: labels, points (finite ones), first, last, min, max, mean, trend (see
    TREND_TOLERANCE), change (last - first), slope_per_second, first_at/last_at (ISO 8601 UTC)
    and values [[unix_seconds, float], ...] thinned to at most max_points (first, last, min and
    max kept). NaN and ±Inf are counted (non_finite) and left out of everything else. Over
    max_series series, the top max_series by `rank` ("last" value or "max") are kept and a cut
    note suggests `topk(<n>, <query>)` (QUERY_PLACEHOLDER; see fill_query).
    data = {"series_total", "series_shown", "series": [...], "cut": [str, ...]}."""
    if rank not in ("last", "max"):
        raise ValueError(f"rank must be 'last' or 'max', not {rank!r}")
    max_series = max(1, max_series)
    parsed = [(item.get("metric", {}), *parse_points(item.get("values", []))) for item in result]
    cut: list[str] = []
    if len(parsed) > max_series:
        keyed = [
            (max(v for _, v in points) if rank == "max" else points[-1][1]) if points else None
            for _, points, _ in parsed
        ]
        order = sorted(
            range(len(parsed)),
            key=lambda i: (keyed[i] is not None, keyed[i] or 0.0),
            reverse=True,
        )
        parsed = [parsed[i] for i in sorted(order[:max_series])]
        cut.append(_series_cut_note(len(result), max_series, f"largest {rank} value"))
    entries: list[dict[str, Any]] = []
    thinned = 0
    for metric, points, skipped in parsed:
        entry, was_thinned = _series_entry(metric, points, skipped, max_points)
        entries.append(entry)
        thinned += was_thinned
    if thinned:
        cut.append(
            f"values of {thinned} series thinned to at most {max_points} points"
            " (first, last, min and max kept)"
        )
    _note_non_finite(entries, cut)
    data = {"series_total": len(result), "series_shown": len(entries), "series": entries}
    return _text([series_line(entry) for entry in entries], cut), {**data, "cut": cut}


def _series_cut_note(total: int, shown: int, by: str) -> str:
    return (
        f"{total} series; showing the {shown} with the {by}, {total - shown} left out;"
        f" narrow the query by labels or use topk({shown}, {QUERY_PLACEHOLDER})"
    )


def _note_non_finite(entries: list[dict[str, Any]], cut: list[str]) -> None:
    counts = [entry.get("non_finite", 0) for entry in entries]
    if sum(counts):
        cut.append(
            f"{sum(counts)} NaN/Inf values in {sum(1 for c in counts if c)} series"
            " left out of the statistics and values"
        )


def summarise_vector(
    result: list[dict[str, Any]], *, max_series: int
) -> tuple[str, dict[str, Any]]:
    """Instant vector: [{"metric": {...}, "value": [sec, "str"]}] -> data {"series_total",
    "series_shown", "series": [{"labels", "value", "at"}], "cut": [...]}; Prometheus's order,
    or the largest values first when cut. A value that is NaN/±Inf (or not a number, as a
    string result) is None, with the server's text in "text"."""
    max_series = max(1, max_series)
    entries: list[dict[str, Any]] = []
    sort_keys: list[float] = []  # +Inf is the largest value, NaN and text the smallest
    for item in result:
        pair = item.get("value") or [None, None]
        at, value = _parse_value(pair[0]), _parse_value(pair[1])
        sort_keys.append(-math.inf if value is None or math.isnan(value) else value)
        entry: dict[str, Any] = {
            "labels": dict(item.get("metric", {})),
            "value": value if value is not None and math.isfinite(value) else None,
            "at": iso(at) if at is not None and math.isfinite(at) else None,
        }
        if entry["value"] is None:
            entry["text"] = str(pair[1])
        entries.append(entry)
    cut: list[str] = []
    if len(entries) > max_series:
        order = sorted(range(len(entries)), key=sort_keys.__getitem__, reverse=True)
        entries = [entries[i] for i in order[:max_series]]
        cut.append(_series_cut_note(len(result), max_series, "largest values"))
    missing = sum(1 for entry in entries if entry["value"] is None)
    if missing:
        cut.append(f"{missing} series have no finite value (NaN, Inf or text)")
    lines = [
        f"{format_labels(e['labels'])} = {e['text'] if e['value'] is None else compact(e['value'])}"
        for e in entries
    ]
    data = {"series_total": len(result), "series_shown": len(entries), "series": entries}
    return _text(lines, cut), {**data, "cut": cut}


# --- alert expressions ---------------------------------------------------------------------

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": op.gt,
    ">=": op.ge,
    "<": op.lt,
    "<=": op.le,
    "==": op.eq,
    "!=": op.ne,
}
_MIRRORED = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "==": "==", "!=": "!="}
_NUMBER = re.compile(
    r"^[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+|inf|nan)$",
    re.IGNORECASE,
)
_SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b", re.IGNORECASE)
_BOOL = re.compile(r"^bool\b\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Comparison:
    """`lhs <operator> value`, written the other way round (`3 < x`) when `mirrored`; the
    operator is always as seen from lhs."""

    lhs: str
    operator: str
    value: float
    bool_modifier: bool = False
    mirrored: bool = False

    def holds(self, sample: float) -> bool:
        return _OPERATORS[self.operator](sample, self.value)

    def describe(self) -> str:
        return f"{self.operator} {compact(self.value)}"


def _top_level(expression: str) -> tuple[str, list[tuple[int, str]]]:
    """The expression with strings and comments blanked out (same length), and its top-level
    comparison operators as (position, operator): outside (), {}, [] and string literals."""
    chars = list(expression)
    found: list[tuple[int, str]] = []
    depth = 0
    i = 0
    while i < len(chars):
        char = chars[i]
        if char in "\"'`":
            end = i + 1
            while end < len(chars) and chars[end] != char:
                end += 2 if chars[end] == "\\" and char != "`" else 1
            for j in range(i, min(end + 1, len(chars))):
                chars[j] = " "
            i = end + 1
            continue
        if char == "#":  # a comment runs to the end of the line
            while i < len(chars) and chars[i] != "\n":
                chars[i] = " "
                i += 1
            continue
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif depth == 0 and char in "<>=!":
            pair = "".join(chars[i : i + 2])
            if pair in (">=", "<=", "==", "!="):
                found.append((i, pair))
                i += 2
                continue
            if char in "<>":
                found.append((i, char))
        i += 1
    return "".join(chars), found


def split_comparison(expression: str) -> Comparison | None:
    """`lhs <op> [bool] <number>` (or `<number> <op> [bool] rhs`) at the top level of the
    expression; None when there is no such comparison, when the other side is not a numeric
    literal, or when a set operator (and, or, unless) joins several conditions."""
    blanked, found = _top_level(expression)
    if not found or _SET_OPERATOR.search(_outside_brackets(blanked)):
        return None
    # Comparisons associate to the left: in `a > b > 3` the last one is outermost.
    position, symbol = found[-1]
    after = position + len(symbol)
    skip, has_bool = _skip_bool(blanked[after:])
    value = _number(blanked[after + skip :])
    lhs = expression[:position].strip()
    if value is not None and lhs:
        return Comparison(lhs, symbol, value, bool_modifier=has_bool)
    if len(found) != 1:
        return None
    value = _number(blanked[:position])
    rhs = expression[after + skip :].strip()
    if value is None or not rhs:
        return None
    return Comparison(rhs, _MIRRORED[symbol], value, bool_modifier=has_bool, mirrored=True)


def _skip_bool(text: str) -> tuple[int, bool]:
    """How many characters the `bool` modifier (and spaces) take at the start of `text`."""
    stripped = text.lstrip()
    match = _BOOL.match(stripped)
    if match is None:
        return 0, False
    return len(text) - len(stripped) + match.end(), True


def _outside_brackets(blanked: str) -> str:
    """Only the depth-0 characters (so `sum by (x) (a and b)` hides its inner `and`)."""
    kept: list[str] = []
    depth = 0
    for char in blanked:
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif depth == 0:
            kept.append(char)
    return "".join(kept)


def _number(blanked: str) -> float | None:
    """The numeric literal that is all of `blanked` (strings and comments already blanked, so
    a quoted "3" is not a number), or None."""
    candidate = blanked.strip()
    if not _NUMBER.match(candidate):
        return None
    unsigned = candidate.lstrip("+-")
    if unsigned.lower().startswith("0x"):
        magnitude = float(int(unsigned, 16))
        return -magnitude if candidate.startswith("-") else magnitude
    return float(candidate)


@dataclass
class _Run:
    start: float
    end: float
    points: int


def _last_run(points: Sequence[Point], holds: Callable[[float], bool], step: float) -> _Run | None:
    """The last contiguous run of points that hold: consecutive steps, nothing missing."""
    run: _Run | None = None
    previous_held_at: float | None = None
    for at, value in points:
        if not holds(value):
            previous_held_at = None
            continue
        if previous_held_at is not None and run is not None and at - previous_held_at <= 1.5 * step:
            run.end = at
            run.points += 1
        else:
            run = _Run(at, at, 1)
        previous_held_at = at
    return run


def _over(peak: float, comparison: Comparison) -> dict[str, float | None] | None:
    """How far the peak is past the threshold, in the breaching direction."""
    if comparison.operator in (">", ">="):
        absolute = peak - comparison.value
    elif comparison.operator in ("<", "<="):
        absolute = comparison.value - peak
    else:
        return None
    ratio = absolute / abs(comparison.value) if comparison.value else None
    return {"absolute": absolute, "ratio": ratio}


def _peak(values: Sequence[float], comparison: Comparison | None) -> float:
    """The most extreme value in the breaching direction (the lowest for < and <=)."""
    if comparison is not None and comparison.operator in ("<", "<="):
        return min(values)
    return max(values)


def summarise_breach(
    result: list[dict[str, Any]],
    *,
    comparison: Comparison | None,
    step: float,
    last_step_at: float,
    window_start: float,
    max_series: int,
    max_points: int,
) -> tuple[str, dict[str, Any]]:
    """When a condition held, per series of a range result.

    With a comparison, `result` is its left side and a point holds when the comparison does;
    without one, `result` is the alert expression itself, whose series exist only where it
    holds, so a present point holds. Per series: the statistics of summarise_matrix plus
    breach_started_at and breaching_for_seconds (of the last contiguous run of holding points),
    breaching (that run reaches the last step), peak and peak_over_threshold. Breaching
    series come first; over max_series, the rest are cut."""
    max_series = max(1, max_series)
    holds: Callable[[float], bool] = comparison.holds if comparison else (lambda _value: True)
    rows: list[dict[str, Any]] = []
    for item in result:
        points, skipped = parse_points(item.get("values", []))
        run = _last_run(points, holds, step)
        breaching = run is not None and run.end >= last_step_at - step / 2
        peak = _peak([v for _, v in points], comparison) if points else None
        entry, was_thinned = _series_entry(item.get("metric", {}), points, skipped, max_points)
        entry.update(
            breaching=breaching,
            breach_started_at=iso(run.start) if run else None,
            breach_ended_at=None if run is None or breaching else iso(run.end),
            breaching_for_seconds=round(run.end - run.start, 3) if run else None,
            breach_since_window_start=run is not None and run.start <= window_start + step / 2,
            peak=peak,
            peak_over_threshold=_over(peak, comparison)
            if comparison and peak is not None
            else None,
        )
        rows.append({"entry": entry, "thinned": was_thinned, "run": run})

    def extremeness(row: dict[str, Any]) -> float:
        peak: float | None = row["entry"]["peak"]
        if peak is None:
            return -math.inf
        return -peak if comparison and comparison.operator in ("<", "<=") else peak

    rows.sort(key=lambda row: (row["entry"]["breaching"], extremeness(row)), reverse=True)
    cut: list[str] = []
    if len(rows) > max_series:
        cut.append(_series_cut_note(len(rows), max_series, "breaching or most extreme values"))
        rows = rows[:max_series]
    entries = [row["entry"] for row in rows]
    thinned = sum(1 for row in rows if row["thinned"])
    if thinned:
        cut.append(
            f"values of {thinned} series thinned to at most {max_points} points"
            " (first, last, min and max kept)"
        )
    _note_non_finite(entries, cut)
    early = [
        entry for entry in entries if entry["breaching"] and entry["breach_since_window_start"]
    ]
    if early:
        cut.append(
            f"{len(early)} series breached from the start of the window; the breach may have"
            " begun earlier (widen `since` to see when)"
        )

    current = [entry for entry in entries if entry["breaching"]]
    peaks = [entry for entry in entries if entry["peak"] is not None]
    top = max(peaks, key=lambda e: extremeness({"entry": e})) if peaks else None
    started = min((row["run"].start for row in rows if row["entry"]["breaching"]), default=None)
    data: dict[str, Any] = {
        "threshold": (
            {"operator": comparison.operator, "value": comparison.value} if comparison else None
        ),
        "breaching": bool(current),
        "breach_started_at": iso(started) if started is not None else None,
        # Rounded to Prometheus's millisecond resolution (the sum of floats adds noise).
        "breaching_for_seconds": (
            round(last_step_at - started, 3) if started is not None else None
        ),
        "peak": top["peak"] if top else None,
        "peak_over_threshold": top["peak_over_threshold"] if top else None,
        "series_total": len(result),
        "series_shown": len(entries),
        "series": entries,
        "cut": cut,
    }
    return _breach_text(data, comparison, last_step_at), data


def _breach_text(data: dict[str, Any], comparison: Comparison | None, now: float) -> str:
    if data["breaching"]:
        head = (
            f"breaching since {short_time(_seconds(data['breach_started_at']), now)}"
            f" ({format_duration(data['breaching_for_seconds'])})"
        )
    else:
        ended = [e for e in data["series"] if e["breach_ended_at"]]
        if ended:
            last = max(ended, key=lambda e: e["breach_ended_at"])
            head = (
                "not breaching at the end of the window; last breach"
                f" {short_time(_seconds(last['breach_started_at']), now)}"
                f" to {short_time(_seconds(last['breach_ended_at']), now)}"
            )
        else:
            head = "did not hold in the window"
    if data["peak"] is not None:
        head += f"; peak {compact(data['peak'])}"
        if comparison is not None:
            head += f" against {comparison.describe()}"
            over = data["peak_over_threshold"]
            if over is not None:
                detail = signed(over["absolute"])
                if over["ratio"] is not None:
                    word = "over" if over["absolute"] >= 0 else "short"
                    detail += f", {abs(over['ratio']) * 100:.0f}% {word}"
                head += f" ({detail})"
    lines = [head]
    for entry in data["series"]:
        line = series_line(entry)
        if entry["breaching"]:
            line += f"; breaching since {short_time(_seconds(entry['breach_started_at']), now)}"
        lines.append(line)
    lines.extend(f"cut: {note}" for note in data["cut"])
    return "\n".join(lines)


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
