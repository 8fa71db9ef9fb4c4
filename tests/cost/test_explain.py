"""``membound.explain`` and ``membound explain``: tables with every column, the summary, the PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import membound
from membound.cost import Hardware
from membound.cost.report import COLUMNS, si
from membound.explainer import Explanation, explain, explain_cli, moe_active_bytes
from membound.ir.graph import Graph
from membound.ir.types import B, S, TensorType
from membound.models import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
H100 = Hardware.named("h100-sxm")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Explanation, Path]:
    out = tmp_path_factory.mktemp("explain")
    model = build_model("llama-tiny", dtype=torch.bfloat16)
    ids = torch.randint(0, 256, (2, 9))
    return explain(model, (ids,), hardware=H100, batch=3, seq_len=33, cache_len=100, out=out, measure=False), out


def test_tables_before_and_after_for_both_phases(tiny: tuple[Explanation, Path]) -> None:
    report, _ = tiny
    assert set(report.tables) == {(stage, phase) for stage in ("before", "after") for phase in ("prefill", "decode")}
    for rows in report.tables.values():
        assert rows and sum(r.share for r in rows) == pytest.approx(1.0)
        assert all(r.estimate.bound in ("memory", "compute") for r in rows)
    # the pipeline does not make the step slower
    before = sum(r.predicted_s for r in report.tables[("before", "decode")])
    after = sum(r.predicted_s for r in report.tables[("after", "decode")])
    assert after <= before


def test_decode_rows_are_at_one_token_over_the_cache(tiny: tuple[Explanation, Path]) -> None:
    report, _ = tiny
    attention = [r for r in report.tables[("before", "decode")] if r.op == "attention"]
    assert len(attention) == 2  # two layers
    assert attention[0].shape == "bf16[3, 4, 1, 16]"  # B=3, 4 query heads, one token, head dim 16
    # q and out at one token, k and v of 2 kv heads over T=100 positions
    assert attention[0].bytes == 2 * (2 * 3 * 4 * 16 + 2 * 3 * 2 * 100 * 16)


def test_printed_report_has_every_column_and_the_summary(tiny: tuple[Explanation, Path]) -> None:
    report, _ = tiny
    text = str(report)
    header = next(line for line in text.splitlines() if line.startswith("op "))
    for column in COLUMNS[:-1]:  # no measured column without a GPU
        assert column in header
    assert "meas us" not in header
    for phase in ("before prefill", "before decode", "after prefill", "after decode"):
        assert phase in text
    assert "KV cache: 256B per token" in text  # 2 layers * 2 kv heads * head dim 16 * (k, v) * 2 bytes
    assert "no attention op" not in text
    assert "linear %" in text and "memory" in text


def test_plot_is_a_png_named_after_the_model(tiny: tuple[Explanation, Path]) -> None:
    report, out = tiny
    assert report.plot_path == out / "roofline-llama.png"
    assert report.plot_path.read_bytes()[:8] == PNG_MAGIC
    assert report.plot_path.stat().st_size > 10_000


def test_measured_times_sit_beside_predictions(tmp_path: Path) -> None:
    g = Graph("mlp")
    x = g.add_input("x", TensorType(torch.float32, [B, S, 24]))
    w = g.add_param("w", TensorType(torch.float32, [40, 24]))
    y = g.call("silu", g.call("linear", x, w))
    g.set_outputs([y])
    report = explain(g, hardware=Hardware.detect("cpu"), batch=2, seq_len=5, measure=True, show="prefill")
    rows = report.tables[("before", "prefill")]
    assert [r.op for r in rows] == ["linear", "silu"]
    assert all(r.measured_s is not None and r.measured_s > 0 for r in rows)
    text = str(report)
    assert "meas us" in text and "'after' is not shown" in text
    assert "no attention op" in text  # so decode's KV-cache reads are not counted, and the report says so
    assert ("after", "prefill") not in report.tables


def test_explain_of_an_uncompiled_model_says_what_to_do() -> None:
    import membound

    compiled = membound.compile(build_model("llama-tiny"))
    with pytest.raises(RuntimeError, match="example_inputs"):
        explain(compiled)


def test_explain_rejects_what_it_cannot_explain() -> None:
    with pytest.raises(TypeError, match="CompiledModel"):
        explain(42)
    with pytest.raises(ValueError, match="show"):
        explain(Graph("g"), show="training")


def test_cli_prints_the_table_and_writes_the_plot_into_out_dir(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = explain_cli("llama-tiny", str(tmp_path))
    assert Path(path) == tmp_path.resolve() / "roofline-llama-tiny.png"
    assert Path(path).read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "== llama-tiny: decode step" in printed and "FLOP/B" in printed and "after decode" in printed


def test_membound_explain_command_writes_into_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from membound.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["explain", "llama-tiny"]) == 0
    assert (tmp_path / "roofline-llama-tiny.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert str(tmp_path / "roofline-llama-tiny.png") in printed and "summary on" in printed


def test_moe_notes_give_the_active_expert_bytes_per_token() -> None:
    """mixtral-tiny: top-2 of 4 experts per layer; a decode token reads 2/4 of the expert weights, a
    batch of 2 tokens (4 pairs) may touch all of them."""
    model = build_model("mixtral-tiny")
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 3)
    e, k = model.config.n_experts, model.config.top_k
    compiled = membound.compile(model, example_inputs=(torch.randint(0, 256, (2, 16)),), backend="reference")
    report = explain(compiled, hardware="h100", measure=False)
    note = next(n for n in report.notes if n.startswith("after: "))
    want = f"reads {si(total * k / e, 'B')} of the {si(total, 'B')} of expert weights ({k / e:.0%})"
    assert f"2 moe ops (top-{k} of {e} experts)" in note and want in note, note
    assert f"{si(total * k / e, 'B')} per token" in note
    assert not any(n.startswith("before: ") for n in report.notes)  # the captured graph has no moe op
    assert "(100%)" in moe_active_bytes(compiled.ir, batch=2)


def test_a_one_row_example_sizes_the_kv_cache() -> None:
    """A one-prompt example (``[1, S]`` ids) captures a graph whose batch dim is specialised to 1; the KV cache is
    then sized per position alone (it raised "not per-token data" before). HF gpt-oss (attention sinks, experts)
    with one row: two attention ops, the cache per token 2 layers x k, v x 2 kv heads x 16 x 4 bytes."""
    import transformers as T

    cfg = T.GptOssConfig(vocab_size=97, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                         num_experts_per_tok=2, sliding_window=3, layer_types=["sliding_attention", "full_attention"],
                         max_position_embeddings=128)
    torch.manual_seed(0)
    model = T.GptOssForCausalLM(cfg).eval()
    report = explain(model, (torch.randint(0, 97, (1, 8)),), hardware=H100, measure=False)
    after = report.tables[("after", "decode")]
    assert [r.op for r in after].count("attention") == 2
    assert int(report.phases["after"].kv_bytes_per_token) == 2 * 2 * 2 * 16 * 4
