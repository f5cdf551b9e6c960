"""Small charts drawn on the server as inline SVG: no script, no library, no CDN.

Every chart stretches to its box (``preserveAspectRatio="none"``), so text stays outside the
SVG: the caller writes scale and times in HTML next to it. Colours come from the stylesheet
through classes (the Content-Security-Policy forbids inline styles).
"""

from __future__ import annotations

from collections.abc import Sequence

from celeriac.web.markup import esc

W, H = 600.0, 120.0


def _svg(inner: str, label: str, cls: str, height: float = H) -> str:
    return (f'<svg class="chart {cls}" viewBox="0 0 {W:.0f} {height:.0f}" '
            f'preserveAspectRatio="none" role="img" aria-label="{esc(label)}">{inner}</svg>')


def stacked_bars(
    series: Sequence[tuple[float, float]], label: str, classes: tuple[str, str] = ("ok", "fail"),
    height: float = H,
) -> tuple[str, float]:
    """Bars of two stacked counts per bucket (bottom: first, top: second); returns the SVG and
    the top of its scale."""
    top = max([*(a + b for a, b in series), 1.0])
    n = max(len(series), 1)
    step = W / n
    gap = min(1.0, step * 0.15)
    parts = [f'<line class="grid" x1="0" x2="{W:.0f}" y1="{height / 2:.1f}" '
             f'y2="{height / 2:.1f}"/>']
    for i, (a, b) in enumerate(series):
        x = i * step + gap / 2
        ha = a / top * (height - 4)
        hb = b / top * (height - 4)
        if ha > 0:
            parts.append(f'<rect class="col {classes[0]}" x="{x:.2f}" y="{height - ha:.2f}" '
                         f'width="{step - gap:.2f}" height="{ha:.2f}"/>')
        if hb > 0:
            parts.append(f'<rect class="col {classes[1]}" x="{x:.2f}" '
                         f'y="{height - ha - hb:.2f}" width="{step - gap:.2f}" '
                         f'height="{hb:.2f}"/>')
    return _svg("".join(parts), label, "bars", height), top


def lines(
    series: Sequence[Sequence[float | None]], label: str, classes: Sequence[str],
    top: float | None = None, height: float = H,
) -> tuple[str, float]:
    """One polyline per column of ``series`` (a row per bucket); None leaves a gap. Returns the
    SVG and the top of its scale."""
    values = [v for row in series for v in row if v is not None]
    top = top if top is not None else max([*values, 0.0]) or 1.0
    n = max(len(series), 1)
    step = W / n
    parts = [f'<line class="grid" x1="0" x2="{W:.0f}" y1="{height / 2:.1f}" '
             f'y2="{height / 2:.1f}"/>']
    for col, cls in enumerate(classes):
        runs: list[list[str]] = [[]]
        for i, row in enumerate(series):
            v = row[col] if col < len(row) else None
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            y = height - min(v / top, 1.0) * (height - 4)
            runs[-1].append(f"{i * step + step / 2:.2f},{y:.2f}")
        for run in runs:
            if len(run) == 1:  # a lone point: a dot, or it would not show
                cx, cy = run[0].split(",")
                parts.append(f'<circle class="dot {cls}" cx="{cx}" cy="{cy}" r="2.5"/>')
            elif run:
                parts.append(f'<polyline class="line {cls}" points="{" ".join(run)}"/>')
    return _svg("".join(parts), label, "lines", height), top


def spark(counts: Sequence[int], label: str) -> str:
    """A tiny bar chart of counts (failures over time in one group)."""
    svg, _ = stacked_bars([(0.0, float(c)) for c in counts], label, height=30.0)
    return svg.replace('class="chart bars"', 'class="chart spark"', 1)


def fmt_scale(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")
