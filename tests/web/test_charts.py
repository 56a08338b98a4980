"""The SVG chart geometry: scales, where points and bars land, labels and descriptions."""

from __future__ import annotations

import pytest

from loraplex.platform.dashboard.charts import (
    Frame,
    format_number,
    line_chart,
    nice_ceiling,
    stacked_bar_chart,
)


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [
        (0, 1),
        (-3, 1),
        (0.3, 0.5),
        (1, 1),
        (1.002, 1),
        (1.01, 2),
        (2.2, 2.5),
        (7, 10),
        (11, 20),
        (480, 500),
        (5.1, 10),
    ],
)
def test_nice_ceiling(value, ceiling):
    assert nice_ceiling(value) == pytest.approx(ceiling)


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (2.5, "2.5"), (12.4, "12"), (1500, "1.5k"), (2_000_000, "2M")]
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_line_chart_places_the_newest_point_at_the_right_edge():
    frame = Frame()
    chart = line_chart([(300, 0.0), (150, 5.0), (0, 10.0)], window_seconds=300, total=42, unit="x")
    points = [tuple(map(float, p.split(","))) for p in chart.line.split()]
    assert points[0] == (frame.left, frame.bottom)  # oldest, value 0, bottom left
    assert points[-1] == (frame.right, frame.top)  # newest at the peak: the scale's top
    assert points[1][0] == pytest.approx((frame.left + frame.right) / 2)
    assert (chart.latest, chart.peak, chart.total) == (10.0, 10.0, 42)
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10"]
    assert [t.label for t in chart.x_ticks] == ["-5 min", "-2.5 min", "now"]
    assert chart.area.startswith("M") and chart.area.endswith("Z")
    assert "now 10, peak 10, 42 in all" in chart.description


def test_line_chart_without_data_and_outside_the_window():
    empty = line_chart([], window_seconds=60, total=0, unit="x")
    assert (empty.line, empty.area, empty.latest, empty.peak) == ("", "", 0.0, 0.0)
    old = line_chart([(61, 9.0)], window_seconds=60, total=0, unit="x")
    assert old.line == ""
    with pytest.raises(ValueError, match="window_seconds"):
        line_chart([], window_seconds=0, total=0, unit="x")


def test_stacked_bars_stack_series_in_order():
    frame = Frame()
    chart = stacked_bar_chart(
        ["00:00", "01:00", "02:00"], {"a": [10, 0, 5], "b": [10, 4, 0]}, unit="tokens"
    )
    first, second, third = chart.bars
    assert [s.series for s in first.segments] == [0, 1]
    assert first.segments[0].y + first.segments[0].height == pytest.approx(frame.bottom)
    assert first.segments[1].y == pytest.approx(frame.top)  # 20 is the stack's full height
    assert [s.series for s in second.segments] == [1]  # a zero draws nothing
    assert second.segments[0].title == "01:00: b, 4 tokens"
    assert third.x > second.x > first.x
    assert [(e.name, e.total) for e in chart.legend] == [("a", 15.0), ("b", 14.0)]
    assert chart.total == 29.0 and chart.description.startswith("29 tokens in all")
    assert [t.label for t in chart.x_ticks] == ["00:00"]


def test_stacked_bars_reject_ragged_series():
    with pytest.raises(ValueError, match="has 1 values for 2 labels"):
        stacked_bar_chart(["a", "b"], {"s": [1]}, unit="x")
    with pytest.raises(ValueError, match="label_every"):
        stacked_bar_chart([], {}, unit="x", label_every=0)


def test_usage_chart_keeps_the_busiest_adapters_and_sums_the_rest():
    from datetime import UTC, datetime

    from loraplex.adapters.usage import UsageBucket
    from loraplex.platform.dashboard.tenant_page import usage_chart, usage_hours

    hours = usage_hours(datetime(2026, 3, 1, 12, 30, tzinfo=UTC))
    assert len(hours) == 24 and hours[-1] == datetime(2026, 3, 1, 12, tzinfo=UTC)

    def bucket(hour: int, name: str | None, tokens: int) -> UsageBucket:
        return UsageBucket(hours[hour], 1, None, name, None, 1, tokens, 0)

    buckets = [bucket(23, f"adapter-{i}", 100 - i) for i in range(9)]
    buckets += [bucket(0, None, 7), bucket(23, "adapter-0", 5)]
    buckets.append(UsageBucket(datetime(2020, 1, 1, tzinfo=UTC), 1, None, "old", None, 1, 9, 9))
    chart = usage_chart(buckets, hours)
    names = [entry.name for entry in chart.legend]
    assert names[:7] == [f"adapter-{i}" for i in range(7)]
    assert names[7] == "other adapters" and "base model" not in names  # 7 tokens: among the rest
    assert chart.legend[0].total == 105 and chart.legend[7].total == 93 + 92 + 7
    assert chart.total == sum(100 - i for i in range(9)) + 5 + 7
    assert [t.label for t in chart.x_ticks][:2] == ["13:00", "17:00"]
