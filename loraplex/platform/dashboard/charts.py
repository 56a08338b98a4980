"""Geometry of the dashboard's charts, drawn as SVG by the templates (`_charts.html`).

The server computes every coordinate and label here, so a chart is plain markup: it renders
without JavaScript, is refreshed by swapping the markup, and its numbers are testable in Python.
Series colours are CSS classes (`series-0` ... `series-7`), so the page needs no inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 640
HEIGHT = 180
MARGIN_LEFT = 48
MARGIN_RIGHT = 12
MARGIN_TOP = 12
MARGIN_BOTTOM = 26
SERIES_COLOURS = 8
CEILING_SLACK = 0.005


@dataclass(frozen=True)
class Tick:
    position: float  # x or y in chart coordinates
    label: str


@dataclass(frozen=True)
class Frame:
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> int:
        return MARGIN_LEFT

    @property
    def right(self) -> int:
        return self.width - MARGIN_RIGHT

    @property
    def top(self) -> int:
        return MARGIN_TOP

    @property
    def bottom(self) -> int:
        return self.height - MARGIN_BOTTOM

    def y_of(self, value: float, ceiling: float) -> float:
        return self.bottom - (self.bottom - self.top) * (value / ceiling)


@dataclass(frozen=True)
class LineChart:
    frame: Frame
    line: str  # SVG polyline points, "x,y x,y ..."; empty without data
    area: str  # SVG path of the filled area under the line; empty without data
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    latest: float
    peak: float
    total: float  # what the window added up to (e.g. requests in the last five minutes)
    description: str  # the chart in words, for screen readers


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    series: int  # colour index
    title: str  # tooltip: bucket, series name and value


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    segments: list[Segment]


@dataclass(frozen=True)
class LegendEntry:
    series: int
    name: str
    total: float


@dataclass(frozen=True)
class BarChart:
    frame: Frame
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[LegendEntry]
    total: float
    description: str


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `value` (1 for 0),
    give or take half a percent: a rate of 1.002/s (timer jitter) keeps a scale up to 1."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0):
        if step * power >= value * (1 - CEILING_SLACK):
            return step * power
    return 10.0 * power


def format_number(value: float) -> str:
    """Short human form: 950, 1.2k, 3.4M; fractions below 10 keep one decimal."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.1f}".removesuffix(".0") + suffix
    if magnitude and magnitude < 10 and value != int(value):
        return f"{value:.1f}"
    return f"{value:.0f}"


def _y_ticks(frame: Frame, ceiling: float) -> list[Tick]:
    return [Tick(frame.y_of(ceiling * f, ceiling), format_number(ceiling * f)) for f in (0, 0.5, 1)]


def line_chart(
    points: Sequence[tuple[float, float]], *, window_seconds: float, total: float, unit: str
) -> LineChart:
    """A line over the last `window_seconds`: `points` are (age in seconds, value), newest at
    the right edge; `unit` names the value in the description ("requests/s")."""
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be positive, got {window_seconds}")
    frame = Frame()
    shown = sorted(
        ((age, value) for age, value in points if 0 <= age <= window_seconds),
        key=lambda point: -point[0],
    )
    peak = max((value for _, value in shown), default=0.0)
    latest = shown[-1][1] if shown else 0.0
    ceiling = nice_ceiling(peak)
    span = frame.right - frame.left
    coords = [
        (frame.right - span * age / window_seconds, frame.y_of(value, ceiling))
        for age, value in shown
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = ""
    if coords:
        area = (
            f"M{coords[0][0]:.1f},{frame.bottom} "
            + " ".join(f"L{x:.1f},{y:.1f}" for x, y in coords)
            + f" L{coords[-1][0]:.1f},{frame.bottom} Z"
        )
    minutes = window_seconds / 60
    x_ticks = [
        Tick(frame.left, f"-{minutes:g} min"),
        Tick((frame.left + frame.right) / 2, f"-{minutes / 2:g} min"),
        Tick(frame.right, "now"),
    ]
    description = (
        f"{unit} over the last {minutes:g} minutes: now {format_number(latest)}, "
        f"peak {format_number(peak)}, {format_number(total)} in all"
    )
    return LineChart(
        frame, line, area, _y_ticks(frame, ceiling), x_ticks, latest, peak, total, description
    )


def stacked_bar_chart(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    unit: str,
    label_every: int = 4,
) -> BarChart:
    """One bar per label (a time bucket), stacked by series (an adapter), in the given order."""
    if label_every < 1:
        raise ValueError(f"label_every must be at least 1, got {label_every}")
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels")
    frame = Frame()
    names = list(series)
    stacks = [sum(series[name][i] for name in names) for i in range(len(labels))]
    ceiling = nice_ceiling(max(stacks, default=0.0))
    slot = (frame.right - frame.left) / max(len(labels), 1)
    bars = []
    for index, label in enumerate(labels):
        top = float(frame.bottom)
        segments = []
        for number, name in enumerate(names):
            value = series[name][index]
            if value <= 0:
                continue
            height = (frame.bottom - frame.top) * value / ceiling
            top -= height
            title = f"{label}: {name}, {format_number(value)} {unit}"
            segments.append(Segment(top, height, number % SERIES_COLOURS, title))
        bars.append(Bar(frame.left + slot * index + slot * 0.15, slot * 0.7, segments))
    x_ticks = [
        Tick(frame.left + slot * (index + 0.5), label)
        for index, label in enumerate(labels)
        if index % label_every == 0
    ]
    legend = [
        LegendEntry(number % SERIES_COLOURS, name, float(sum(series[name])))
        for number, name in enumerate(names)
    ]
    total = float(sum(stacks))
    description = f"{format_number(total)} {unit} in all" + "".join(
        f"; {entry.name}: {format_number(entry.total)}" for entry in legend
    )
    return BarChart(frame, bars, _y_ticks(frame, ceiling), x_ticks, legend, total, description)
