"""The roofline plot tells before from after (colour, fill, legend) and names B/S/T in its title.
Drawn with matplotlib's Agg backend: no display."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from membound.cost import Hardware
from membound.cost.report import draw_roofline, roofline_title, series_style
from membound.explainer import explain
from membound.models import build_model

matplotlib = pytest.importorskip("matplotlib")
H100 = Hardware.named("h100-sxm")


def test_before_and_after_are_drawn_apart() -> None:
    before, after = series_style("before decode"), series_style("after decode")
    assert before["color"] != after["color"] and before["filled"] != after["filled"]
    assert series_style("before prefill")["marker"] != series_style("before decode")["marker"]
    assert series_style("measured", 0)["color"] != series_style("other", 1)["color"]


def test_title_names_the_model_card_and_dims() -> None:
    dims = {"prefill": {"B": 3, "S": 33}, "decode": {"B": 3, "T": 100}}
    assert roofline_title("llama", H100, dims) == f"llama on {H100.name}: prefill B=3, S=33; decode B=3, T=100"


def test_explain_plot_has_the_title_and_a_legend_entry_per_series(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    model = build_model("llama-tiny")
    report = explain(model, (torch.randint(0, 256, (2, 9)),), hardware=H100, batch=3, seq_len=33, cache_len=100,
                     out=tmp_path, measure=False)
    assert report.plot_path is not None and report.plot_path.exists()
    series = {f"{stage} {phase}": rows for (stage, phase), rows in report.tables.items()}
    fig = draw_roofline(H100, series, title=roofline_title("llama", H100, report.dims))
    try:
        ax = fig.axes[0]
        assert "prefill B=3, S=33" in ax.get_title() and "decode B=3, T=100" in ax.get_title()
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for label in ("before prefill", "before decode", "after prefill", "after decode"):
            assert any(t.startswith(label + ":") for t in legend), legend
        scatters = {c.get_label().split(":")[0]: c for c in ax.collections}
        hollow = scatters["before decode"].get_facecolors()
        filled = scatters["after decode"].get_facecolors()
        assert len(hollow) == 0 or hollow[0][3] == 0.0          # no fill before
        assert tuple(filled[0][:3]) == to_rgba("tab:red")[:3]   # filled red after
    finally:
        plt.close(fig)
