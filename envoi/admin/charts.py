"""Server-side SVG charts (no build step, no script): bars over time, horizontal bars."""
from __future__ import annotations

from markupsafe import Markup, escape

COLOURS = ("#1a56db", "#0e9f6e", "#e3a008", "#e02424")


def bars(labels: list[str], series: dict[str, list[int]], *, title: str, width: int = 640, height: int = 180) -> Markup:
    """Grouped bars: one group per label, one bar per series; a legend; accessible title.
    A negative value draws no bar (its tooltip still tells it)."""
    top = max([1] + [v for values in series.values() for v in values])
    n = max(1, len(labels))
    pad_left, pad_bottom, pad_top = 36, 28, 20
    plot_w, plot_h = width - pad_left - 8, height - pad_bottom - pad_top
    group = plot_w / n
    bar_w = max(1.0, (group * 0.8) / max(1, len(series)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{pad_left}" y="12" font-size="11">{top}</text>',
             f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width - 8}" y2="{pad_top + plot_h}" stroke="#999"/>']
    for s, (name, values) in enumerate(series.items()):
        colour = COLOURS[s % len(COLOURS)]
        for i, value in enumerate(values):
            h = plot_h * max(0, value) / top
            x = pad_left + i * group + group * 0.1 + s * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{pad_top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{escape(labels[i])} {escape(name)}: {value}</title></rect>')
        parts.append(f'<rect x="{pad_left + 110 * s}" y="{height - 12}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{pad_left + 14 + 110 * s}" y="{height - 3}" font-size="11">{escape(name)}</text>')
    step = max(1, n // 6)
    for i in range(0, n, step):
        parts.append(f'<text x="{pad_left + i * group:.1f}" y="{pad_top + plot_h + 12}" font-size="10">'
                     f'{escape(labels[i])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(labels: list[str], series: dict[str, list[float]], *, title: str, unit: str = "", width: int = 640) -> Markup:
    """Horizontal grouped bars: one row per label, one bar per series, the value written after each bar."""
    top = max([1e-9] + [v for values in series.values() for v in values if v is not None])
    pad_left, row_bar, gap = 80, 14, 10
    rows = max(1, len(labels))
    k = max(1, len(series))
    height = 8 + rows * (k * row_bar + gap) + 20
    plot_w = width - pad_left - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i, label in enumerate(labels):
        y0 = 8 + i * (k * row_bar + gap)
        parts.append(f'<text x="4" y="{y0 + k * row_bar / 2 + 4:.1f}" font-size="12">{escape(label)}</text>')
        for s, (name, values) in enumerate(series.items()):
            value = values[i] or 0
            w = plot_w * max(0, value) / top
            y = y0 + s * row_bar
            text = f"{value:g}{unit}"
            parts.append(f'<rect x="{pad_left}" y="{y}" width="{w:.1f}" height="{row_bar - 2}" '
                         f'fill="{COLOURS[s % len(COLOURS)]}"><title>{escape(label)} {escape(name)}: {escape(text)}'
                         f'</title></rect><text x="{pad_left + w + 4:.1f}" y="{y + row_bar - 4}" font-size="10">'
                         f'{escape(text)}</text>')
    for s, name in enumerate(series):
        parts.append(f'<rect x="{pad_left + 150 * s}" y="{height - 12}" width="10" height="10" '
                     f'fill="{COLOURS[s % len(COLOURS)]}"/><text x="{pad_left + 14 + 150 * s}" y="{height - 3}" '
                     f'font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
