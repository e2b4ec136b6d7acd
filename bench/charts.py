#!/usr/bin/env python3
"""Draws a benchmark result (the .json next to a results .md) as one SVG, by hand.

Left panel: end-to-end messages per second per row and system (log scale, the number on each
bar, the secmx/Postfix ratio beside each row). Right panel: CPU seconds per 1,000 messages.

    python3 bench/charts.py bench/results/2026-01-01-120000.json docs/benchmarks.svg
"""

import json
import math
import sys
from html import escape

COLOURS = {"ceiling": "#9aa0a6", "secmx": "#1a73e8", "postfix": "#e8710a"}
SYSTEMS = ("ceiling", "secmx", "postfix")
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"

BAR, GAP, ROW_GAP = 13, 2, 16
LABEL_W, LEFT_W, RATIO_W, RIGHT_W, MARGIN = 190, 420, 80, 230, 20


def row_label(entry):
    tls = "STARTTLS" if entry["tls"] else "plaintext"
    sessions = entry["sessions"]
    return f"{entry['size'] // 1024} KiB · {sessions} session{'s' if sessions > 1 else ''} · {tls}"


def fmt(value):
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def text(x, y, content, size=12, anchor="start", weight="normal", fill="#202124"):
    return (f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
            f"font-weight='{weight}' fill='{fill}' {FONT}>{escape(content)}</text>")


def log_axis(values):
    """From the decade below the smallest value to a little past the largest (room for the
    number written after the longest bar)."""
    lo = min(v for v in values if v > 0)
    return 10 ** math.floor(math.log10(lo)), max(values) * 1.6


def nice_step(span, ticks=3):
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def draw(result):
    summary, order, meta = result["summary"], result["row_order"], result["meta"]
    rows = [(key, summary[key]) for key in order if key in summary]
    rates = [e["e2e_rate"] for _, s in rows for e in s.values() if e.get("e2e_rate")]
    cpus = [e["cpu_per_1000"] for _, s in rows for e in s.values() if e.get("cpu_per_1000")]
    if not rates:
        raise SystemExit("no end-to-end rates in this result")
    lo, hi = log_axis(rates)
    cpu_step = nice_step(max(cpus)) if cpus else 1.0
    cpu_hi = max(cpus) * 1.25 if cpus else 1.0

    note = meta.get("note") or ""
    top = 78 + (16 if note else 0)
    group_h = lambda s: len([x for x in SYSTEMS if x in s]) * (BAR + GAP)  # noqa: E731
    height = top + sum(group_h(s) + ROW_GAP for _, s in rows) + 52
    left_x = MARGIN + LABEL_W
    right_x = left_x + LEFT_W + RATIO_W + 30
    width = right_x + RIGHT_W + MARGIN

    m = meta["machine"]
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'>",
        f"<rect width='{width}' height='{height}' fill='white'/>",
        text(MARGIN, 24, "secmx vs Postfix vs the smtp-source → smtp-sink ceiling", 16,
             weight="bold"),
        text(MARGIN, 42, f"{meta['date']} · {m['nproc']} CPUs · {m.get('cpu_model', '')} · "
             f"kernel {m['kernel']} · durable spools · median of {meta['repeat']}", 11,
             fill="#5f6368"),
        text(MARGIN, 58, note if len(note) <= 150 else note[:147] + "…", 11,
             fill="#d93025") if note else "",
        text(left_x, top - 14, "end-to-end messages/s (log scale, higher is better)", 12,
             weight="bold"),
        text(left_x + LEFT_W + 4, top - 14, "secmx/Postfix", 11, fill="#5f6368"),
        text(right_x, top - 14, "CPU s / 1,000 msgs (lower is better)", 12,
             weight="bold"),
    ]
    legend_x = width - MARGIN - 3 * 80
    for i, system in enumerate(SYSTEMS):
        x = legend_x + i * 80
        out.append(f"<rect x='{x}' y='16' width='12' height='12' fill='{COLOURS[system]}'/>")
        out.append(text(x + 16, 26, system, 11))

    scale = lambda v: left_x + LEFT_W * (math.log10(v) - math.log10(lo)) / (  # noqa: E731
        math.log10(hi) - math.log10(lo))
    grid_bottom = height - 52
    decade = lo
    while decade <= hi * 1.0001:
        x = scale(decade)
        out.append(f"<line x1='{x:.1f}' y1='{top - 6}' x2='{x:.1f}' y2='{grid_bottom}' "
                   "stroke='#e0e0e0'/>")
        out.append(text(x, grid_bottom + 14, f"{decade:,.0f}", 10, "middle", fill="#5f6368"))
        decade *= 10
    tick = 0.0
    while tick <= cpu_hi:
        x = right_x + RIGHT_W * tick / cpu_hi
        out.append(f"<line x1='{x:.1f}' y1='{top - 6}' x2='{x:.1f}' y2='{grid_bottom}' "
                   "stroke='#e0e0e0'/>")
        out.append(text(x, grid_bottom + 14, f"{tick:g}", 10, "middle", fill="#5f6368"))
        tick += cpu_step
    out.append(text(MARGIN, height - 8, "Bars are medians. No ceiling for STARTTLS rows: "
                    "smtp-sink has no TLS. Details and raw runs: the results file of this date "
                    "in bench/results/.", 10, fill="#5f6368"))

    y = top
    for _, systems in rows:
        present = [s for s in SYSTEMS if s in systems]
        first = systems[present[0]]
        out.append(text(left_x - 8, y + group_h(systems) / 2 + 4, row_label(first), 11, "end"))
        for system in present:
            entry = systems[system]
            rate, cpu = entry.get("e2e_rate"), entry.get("cpu_per_1000")
            colour = COLOURS[system]
            if rate:
                w = max(1.0, scale(rate) - left_x)
                out.append(f"<rect x='{left_x}' y='{y}' width='{w:.1f}' height='{BAR}' "
                           f"fill='{colour}'/>")
                out.append(text(left_x + w + 4, y + BAR - 2, fmt(rate), 10))
            else:
                out.append(text(left_x + 4, y + BAR - 2, f"{system}: no result", 10,
                                fill="#d93025"))
            if cpu:
                w = max(1.0, RIGHT_W * cpu / cpu_hi)
                out.append(f"<rect x='{right_x}' y='{y}' width='{w:.1f}' height='{BAR}' "
                           f"fill='{colour}'/>")
                out.append(text(right_x + w + 4, y + BAR - 2, fmt(cpu), 10))
            y += BAR + GAP
        sx, pf = systems.get("secmx", {}), systems.get("postfix", {})
        if sx.get("e2e_rate") and pf.get("e2e_rate"):
            ratio = sx["e2e_rate"] / pf["e2e_rate"]
            out.append(text(left_x + LEFT_W + RATIO_W - 10, y - group_h(systems) / 2 + 2,
                            f"{ratio:.2f}×", 12, "end", "bold",
                            COLOURS["secmx"] if ratio >= 1 else COLOURS["postfix"]))
        y += ROW_GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        result = json.load(f)
    with open(argv[2], "w") as f:
        f.write(draw(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
