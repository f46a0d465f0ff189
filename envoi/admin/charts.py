"""Server-side SVG charts (no build step, no script): bars over time."""
from __future__ import annotations

from markupsafe import Markup, escape

COLOURS = ("#1a56db", "#0e9f6e", "#e3a008", "#e02424")


def bars(labels: list[str], series: dict[str, list[int]], *, title: str, width: int = 640, height: int = 180) -> Markup:
    """Grouped bars: one group per label, one bar per series; a legend; accessible title."""
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
            h = plot_h * value / top
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
