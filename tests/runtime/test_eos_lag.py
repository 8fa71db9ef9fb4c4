"""Greedy decoding with EOS ids learns that every row has finished without waiting for the device each token
(``runtime.generate.AllFinished``): on a GPU a step or two late, those steps emitting only pads, cut afterwards.
The result must be the exact stop's, whatever the lag. The lag is simulated here (on the CPU the flag's copy is
immediate) by a stand-in that reports each flag ``k`` steps late; the exact stop is the loop with a stream that
does not accept extra pad steps (an HF streamer)."""

from __future__ import annotations

import pytest
import torch

import membound.runtime.generate as gen

V, EOS, PAD = 8, 7, 0


def _script(rows: list[list[int]]):
    """logits whose argmax is rows[b][i] at step i (then token 3 forever)."""
    def logits_at(i: int) -> torch.Tensor:
        toks = [r[i] if i < len(r) else 3 for r in rows]
        return torch.nn.functional.one_hot(torch.tensor(toks), V).float()[:, None, :]
    return logits_at


def _run(rows, n, stream, temperature=0.0):
    logits_at = _script(rows)
    calls = []

    def step(i, tokens):
        calls.append(i)
        return logits_at(i + 1)

    gen_ = torch.Generator().manual_seed(0)
    out = gen.token_loop(logits_at(0), step, n, temperature=temperature, top_k=None, top_p=None, eos={EOS}, pad=PAD,
                         stream=stream, generator=gen_)
    return out, len(calls)


class _Late(gen.AllFinished):
    def __init__(self, device: torch.device, k: int) -> None:
        super().__init__(device)
        self.k, self.flags = k, []

    def push(self, flag: torch.Tensor) -> None:
        self.flags.append(bool(flag))

    def seen(self) -> bool:
        return any(self.flags[:max(0, len(self.flags) - self.k)])

    def first_finished(self):  # type: ignore[no-untyped-def]
        return self.flags.index(True) if True in self.flags else None


ROWS = [[1, 2, EOS, 5, 5, 5, 5, 5, 5, 5], [4, 4, 4, 4, EOS, 6, 6, 6, 6, 6]]


@pytest.mark.parametrize("k", [0, 1, 3, 20])
@pytest.mark.parametrize("n", [3, 5, 10])
def test_a_late_stop_gives_the_exact_stops_tokens(k: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    exact, exact_steps = _run(ROWS, n, stream=seen.append)  # a stream without pads_ok: the per-token check
    monkeypatch.setattr(gen, "AllFinished", lambda device: _Late(device, k))
    late, late_steps = _run(ROWS, n, stream=None)
    assert torch.equal(late, exact), (late, exact)
    if n >= 5:  # both rows end at step 4: the exact loop stops there, the late one at most k steps on
        assert exact.shape[1] == 5 and exact[0, 3:].tolist() == [PAD, PAD]
        assert exact_steps == 4 and late_steps <= min(exact_steps + k, n - 1)
    else:
        assert late_steps == exact_steps == n - 1


def test_sampling_and_streamers_stop_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a temperature (the generator must draw no extra numbers) or a stream without ``pads_ok`` (an HF
    streamer would print the extra pads) the loop checks every token and runs no step past the stop."""
    monkeypatch.setattr(gen, "AllFinished", lambda device: pytest.fail("the lagged check was used"))
    _, steps = _run(ROWS, 10, stream=None, temperature=1e-4)
    assert steps == 4
    _, steps = _run(ROWS, 10, stream=lambda t: None)
    assert steps == 4


def test_the_ring_reads_its_oldest_slot_when_full() -> None:
    flags = gen.AllFinished(torch.device("cpu"), slots=2)
    flags.push(torch.tensor(False))
    flags.push(torch.tensor(True))
    assert len(flags.pending) == 2 and not flags.done  # (nothing read yet)
    flags.push(torch.tensor(False))  # both slots taken: the oldest two are read, the slot reused
    assert flags.done and len(flags.pending) == 1 and flags.seen()
    assert flags.first_finished() == 1  # the step whose flag first read true


@pytest.mark.parametrize("k", [1, 4])
def test_hf_generate_with_a_late_stop_equals_hf(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """compiled.generate without a streamer takes the late stop and still returns HF's greedy tokens (EOS on row 0's
    path, row 1 left to run); with a streamer it stops exactly."""
    import membound
    from tests.e2e.hf_models import VOCAB, build_hf

    model = build_hf("llama")
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    model.generation_config.eos_token_id = None
    free = model.generate(ids, max_new_tokens=8, do_sample=False)
    model.generation_config.eos_token_id = [int(free[0, 8]), int(free[1, 9])]  # both rows stop early
    model.generation_config.pad_token_id = 0
    ref = model.generate(ids, max_new_tokens=8, do_sample=False)
    compiled = membound.compile(model)
    used = []
    monkeypatch.setattr(gen, "AllFinished", lambda device: used.append(k) or _Late(device, k))
    assert torch.equal(compiled.generate(ids, max_new_tokens=8, do_sample=False), ref)
    assert used == [k]

    class Streamer:
        def put(self, value: torch.Tensor) -> None:
            pass

        def end(self) -> None:
            pass

    assert torch.equal(compiled.generate(ids, max_new_tokens=8, do_sample=False, streamer=Streamer()), ref)
    assert used == [k]  # the streamer's run checked every token


@pytest.mark.gpu
def test_the_real_ring_on_a_gpu_gives_the_exact_stop() -> None:
    """On CUDA the flags go through pinned memory and events: the same tokens as the per-token check, and at most
    the ring's length of extra steps."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    logits_at = _script(ROWS)

    def run(stream):
        calls = []

        def step(i, tokens):
            calls.append(i)
            torch.cuda._sleep(100_000)  # a device that runs behind the host, as a decode step does
            return logits_at(i + 1).cuda()

        out = gen.token_loop(logits_at(0).cuda(), step, 10, temperature=0.0, top_k=None, top_p=None, eos={EOS},
                             pad=PAD, stream=stream, generator=None)
        return out.cpu(), len(calls)

    exact, exact_steps = run(lambda t: None)
    late, late_steps = run(None)
    assert torch.equal(late, exact) and exact_steps == 4 and late_steps <= 4 + 8
