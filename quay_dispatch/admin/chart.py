"""The last 24 hours as a server-rendered SVG: accepted, delivered and failed per hour as bars, the mean
delivery latency as a line. No script; colours come from the stylesheet's classes, and a title per bar says
the numbers for screen readers and on hover."""

from __future__ import annotations

import time

from markupsafe import Markup, escape

WIDTH, HEIGHT, TOP, BOTTOM, LEFT = 720, 200, 12, 24, 36
SERIES = (("accepted", "bar-accepted"), ("delivered", "bar-delivered"), ("failed", "bar-failed"))


def svg(hours: list[dict]) -> Markup:
    """The chart of `hours` (outbox.hourly()), as SVG markup: every text in it escaped."""
    peak = max([1] + [hour[name] for hour in hours for name, _ in SERIES])
    slowest = max([0.0] + [hour["latency"] or 0.0 for hour in hours])
    slot = (WIDTH - LEFT) / len(hours)
    bar = slot / (len(SERIES) + 1)
    plot = HEIGHT - TOP - BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title">',
             '<title id="chart-title">Deliveries per hour over the last 24 hours</title>',
             f'<text class="axis" x="0" y="{TOP + 8}">{peak}</text>',
             f'<line class="axis-line" x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - BOTTOM}"/>']
    line = []
    for i, hour in enumerate(hours):
        x = LEFT + i * slot
        label = time.strftime("%H:00", time.gmtime(hour["hour"]))
        said = ", ".join(f"{hour[name]} {name}" for name, _ in SERIES)
        for j, (name, css) in enumerate(SERIES):
            height = plot * hour[name] / peak
            parts.append(f'<rect class="{css}" x="{x + j * bar:.1f}" y="{HEIGHT - BOTTOM - height:.1f}" '
                         f'width="{bar:.1f}" height="{height:.1f}"><title>{escape(label)} UTC: {escape(said)}'
                         '</title></rect>')
        if i % 3 == 0:
            parts.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}">{escape(label)}</text>')
        if hour["latency"] is not None and slowest:
            line.append(f"{x + slot / 2:.1f},{HEIGHT - BOTTOM - plot * hour['latency'] / slowest:.1f}")
    if line:
        parts.append(f'<polyline class="latency" points="{" ".join(line)}"><title>mean delivery latency, '
                     f'longest {slowest:.1f} s</title></polyline>')
    parts.append("</svg>")
    return Markup("".join(parts))
