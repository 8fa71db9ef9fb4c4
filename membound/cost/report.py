"""The explain table and the roofline plot.

A table has one row per kernel-launching node (or per kernel, for a partitioned graph): op, result
shape, FLOPs, bytes, arithmetic intensity, bound, predicted time, share of the step, and the measured
time where there is one. Views and scalar constants launch nothing and are counted, not listed.

The plot is the classic roofline: attained FLOP/s against arithmetic intensity on log axes, under
the bandwidth slope and the flat compute roofs (bf16 tensor-core and fp32 vector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from membound.cost.hardware import Hardware
from membound.cost.roofline import Estimate

COLUMNS = ("op", "shape", "FLOPs", "bytes", "FLOP/B", "bound", "pred us", "share", "meas us")


@dataclass(frozen=True)
class Row:
    """One kernel of one step. ``name`` is the result value (``%12``) or the kernel's name."""

    name: str
    op: str
    shape: str
    estimate: Estimate
    share: float
    measured_s: Optional[float] = None
    source: str = ""  # module path and file:line the node was captured from, when known

    @property
    def flops(self) -> float:
        return self.estimate.flops

    @property
    def bytes(self) -> float:
        return self.estimate.bytes

    @property
    def predicted_s(self) -> float:
        return self.estimate.time_s


def make_rows(items: Sequence[tuple[str, str, str, Estimate]],
              measured: Optional[Mapping[str, float]] = None,
              sources: Optional[Mapping[str, str]] = None) -> list[Row]:
    """Rows from ``(name, op, shape, estimate)``; free items are dropped, shares are of the summed time.
    ``measured`` and ``sources`` are keyed by name."""
    kept = [it for it in items if it[3].bound != "free"]
    total = sum(it[3].time_s for it in kept) or 1.0
    measured = measured or {}
    sources = sources or {}
    return [Row(name, op, shape, est, est.time_s / total, measured.get(name), sources.get(name, ""))
            for name, op, shape, est in kept]


def si(x: float, unit: str = "") -> str:
    """``33554432 -> '33.6M'``: three significant digits and an SI prefix."""
    if x == 0:
        return f"0{unit}"
    if math.isinf(x):
        return "inf"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def seconds(t: float) -> str:
    """``0.000384 -> '384 us'``, ``0.0126 -> '12.6 ms'``."""
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def format_table(rows: Sequence[Row], title: str, *, free_count: int = 0, max_rows: Optional[int] = None) -> str:
    """A fixed-width text table; with ``max_rows`` only the slowest rows are listed and the rest summed."""
    shown = list(rows)
    if max_rows is not None and len(shown) > max_rows:
        keep = {id(r) for r in sorted(shown, key=lambda r: -r.predicted_s)[:max_rows]}
        shown = [r for r in shown if id(r) in keep]
    has_measured = any(r.measured_s is not None for r in rows)
    has_source = any(r.source for r in shown)
    cols = COLUMNS if has_measured else COLUMNS[:-1]
    if has_source:
        cols = cols + ("source",)
    body = []
    for r in shown:
        e = r.estimate
        cells = [f"{r.op} %{r.name}", r.shape, si(e.flops), si(e.bytes, "B"),
                 "inf" if math.isinf(e.intensity) else f"{e.intensity:.3g}", e.bound, f"{e.time_s * 1e6:.2f}",
                 f"{r.share * 100:.1f}%"]
        if has_measured:
            cells.append("-" if r.measured_s is None else f"{r.measured_s * 1e6:.2f}")
        if has_source:
            cells.append(r.source or "-")
        body.append(cells)
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(cols)]
    widths[1] = min(widths[1], 28)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            parts.append(c.ljust(w) if i < 2 or cols[i] == "source" else c.rjust(w))
        return "  ".join(parts).rstrip()

    out = [title, line(cols), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    total = sum(r.predicted_s for r in rows)
    notes = [f"{len(rows)} kernels, predicted {seconds(total)}"]
    if has_measured:
        meas = [r.measured_s for r in rows if r.measured_s is not None]
        notes.append(f"measured {seconds(sum(meas))} over {len(meas)} of them")
    if len(shown) < len(rows):
        rest = [r for r in rows if r not in shown]
        notes.append(f"{len(rest)} faster rows not shown ({sum(r.share for r in rest) * 100:.1f}% of the step)")
    if free_count:
        notes.append(f"{free_count} views/constants launch nothing and are not listed")
    out.append("; ".join(notes))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the roofline plot
# ---------------------------------------------------------------------------------------------
# a series label is "<stage> <phase>": the stage picks the colour and hollow/filled, the phase the marker
_STAGE_STYLE = {"before": ("tab:gray", False), "after": ("tab:red", True)}
_MARKERS = {"prefill": "s", "decode": "o"}


def series_style(label: str, index: int = 0) -> dict[str, Any]:
    """How a series is drawn: ``{"color", "filled", "marker"}``. Before the pipeline is hollow and grey,
    after it filled and red, so the two read apart even in print; prefill is a square, decode a circle.
    Other labels take the ``index``-th colour of a fixed cycle, filled diamonds."""
    words = label.split()
    stage = words[0] if words else ""
    color, filled = _STAGE_STYLE.get(stage, (_OTHER_COLORS[index % len(_OTHER_COLORS)], True))
    return {"color": color, "filled": filled, "marker": _MARKERS.get(words[-1] if words else "", "D")}


_OTHER_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def roofline_title(name: str, hardware: Hardware, dims: Optional[Mapping[str, Mapping[str, int]]] = None) -> str:
    """``llama on H100: prefill B=1, S=512; decode B=1, T=512``: the model, the card and each phase's dims."""
    title = f"{name} on {hardware.name}"
    if dims:
        title += ": " + "; ".join(f"{phase} " + ", ".join(f"{k}={v}" for k, v in d.items())
                                  for phase, d in dims.items())
    return title


def plot_roofline(hardware: Hardware, series: Mapping[str, Sequence[Row]], path: Union[str, Path], *,
                  title: str = "") -> Path:
    """Draw the roofline of ``hardware`` with one scatter per series (label -> rows) and write a PNG.

    Each point is a kernel at (FLOPs/byte, FLOPs/predicted time); its area follows its share of the
    step. Measured points (where rows have them) are drawn as crosses at FLOPs/measured time.
    Kernels with no FLOPs (copies, gathers) have no place on log axes and are counted in the legend.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_roofline(hardware, series, title=title)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def draw_roofline(hardware: Hardware, series: Mapping[str, Sequence[Row]], *, title: str = "") -> Any:
    """The roofline figure (matplotlib, Agg: no display needed) that :func:`plot_roofline` writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    points = [r for rows in series.values() for r in rows if r.flops > 0 and r.bytes > 0]
    lo = min([r.estimate.intensity for r in points] + [0.1]) / 2
    hi = max([r.estimate.intensity for r in points] + [hardware.ridge_point("bf16") * 4]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for precision, style in (("bf16", "-"), ("fp32", "--")):
        peak = hardware.peak_flops(precision)
        ax.plot(xs, [min(peak, hardware.bandwidth * x) for x in xs], style, color="black", linewidth=1.2,
                label=f"{precision} roof {si(peak)}FLOP/s, {si(hardware.bandwidth)}B/s")
    for i, (label, rows) in enumerate(series.items()):
        drawn = [r for r in rows if r.flops > 0 and r.bytes > 0]
        skipped = len(rows) - len(drawn)
        style = series_style(label, i)
        color = style["color"]
        sizes = [20 + 400 * r.share for r in drawn]
        ax.scatter([r.estimate.intensity for r in drawn], [r.flops / r.predicted_s for r in drawn], s=sizes,
                   marker=style["marker"], facecolors=color if style["filled"] else "none", edgecolors=color,
                   linewidths=1.2, alpha=0.75,
                   label=f"{label}: {len(drawn)} kernels" + (f" (+{skipped} without FLOPs)" if skipped else ""))
        measured = [r for r in drawn if r.measured_s]
        if measured:
            ax.scatter([r.estimate.intensity for r in measured], [r.flops / r.measured_s for r in measured],
                       marker="x", color=color, label=f"{label}: measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained FLOP/s (predicted, launch included)")
    ax.set_title(title or f"roofline on {hardware.name}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="hollow grey: before the pipeline; filled red: after",
              title_fontsize=8)
    fig.tight_layout()
    return fig
