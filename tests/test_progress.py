"""Progress bars: off when stderr is not a terminal (tests, pipes, CI), on with MEMBOUND_PROGRESS=1;
the kernel-compile bar counts through Triton's post-compile hook and restores it; the CLI's token bar."""

from __future__ import annotations

import io

import pytest

from membound import cli, progress


@pytest.fixture
def not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMBOUND_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr("sys.stdout", io.StringIO())


def _knobs():
    runtime = progress._triton_runtime_knobs()
    if runtime is None:
        pytest.skip("this Triton has no knobs.runtime.jit_post_compile_hook")
    return runtime


def test_bars_are_off_when_not_a_terminal(not_a_terminal: None) -> None:
    assert not progress.enabled()
    assert isinstance(progress.bar("x", total=3), progress._Silent)
    assert isinstance(cli.token_bar(10), progress._Silent)


def test_kernel_compile_bar_is_off_and_sets_no_hook_when_not_a_terminal(not_a_terminal: None) -> None:
    runtime = _knobs()
    before = runtime.jit_post_compile_hook
    with progress.kernel_compiles("g") as shown:
        assert isinstance(shown, progress._Silent)
        assert runtime.jit_post_compile_hook is before


def test_kernel_compile_bar_counts_compiles_and_chains_the_previous_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _knobs()
    monkeypatch.setenv("MEMBOUND_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    seen: list[str] = []

    def previous(**kwargs: object) -> None:
        seen.append(str(kwargs["key"]))

    monkeypatch.setattr(runtime, "jit_post_compile_hook", previous)
    with progress.kernel_compiles("llama") as shown:
        hook = runtime.jit_post_compile_hook
        assert hook is not previous
        for i in range(3):                                   # what Triton calls after compiling each kernel
            hook(key=f"k{i}", repr="", fn=None, compile=None, is_manual_warmup=False, already_compiled=False)
        assert shown.n == 3
    assert runtime.jit_post_compile_hook is previous       # restored
    assert seen == ["k0", "k1", "k2"]


def test_cli_token_bar_ticks_once_per_generated_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBOUND_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr("sys.stdout", io.StringIO())        # text redirected: the bar shows
    import torch

    class Tok:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(chr(97 + i % 26) for i in ids)

    bar = cli.token_bar(5)
    assert not isinstance(bar, progress._Silent) and bar.total == 5
    out = io.StringIO()
    streamer = cli._TextOut(Tok(), out, bar)
    streamer.put(torch.tensor([[1, 2, 3]]))                  # the prompt: no tick
    for t in (4, 5, 6):
        streamer.put(torch.tensor([t]))
    streamer.end()
    assert bar.n == 3 and out.getvalue() == "efg"
    bar.close()
