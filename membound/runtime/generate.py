"""Autoregressive decoding over a step graph with a static KV cache.

The step graph (from the ``insert-kv-cache`` pass) takes ``(tokens[B, S], positions[B, S],
last_index[B])`` and returns the logits of one position per row, ``[B, 1, V]``, writing K/V into the
cache as a side effect. ``decode_loop`` runs it once on the prompt (prefill, S = longest prompt) and
then once per new token (decode, S = 1), with per-row positions so rows of different lengths decode
together: row ``i`` writes and reads cache slots ``0 .. len_i + t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from membound.backends import Executable
from membound.ir.graph import Graph
from membound.runtime.concurrency import exclusive
from membound.runtime.kv_cache import CacheCapacityError, StaticKVCache, capacity_limit

Processor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class KVProgram:
    """What ``generate`` runs: the step graph (prefill), its ``S = 1`` specialisation (decode).

    With ``cuda_graphs`` the decode step is captured into CUDA graphs and replayed: a decode step is
    hundreds of small kernels whose launches would otherwise cost as much as the memory traffic.
    The step reads the cache's capacity ``T`` from the buffers and masks by position, so one graph
    per batch size serves every length the cache holds; graphs bake in the cache's addresses, so
    they are dropped (and captured again, lazily) only when the cache grows to its next bucket
    (``kv_cache.bucket_length``).
    """

    prefill_graph: Graph
    decode_graph: Graph
    prefill: Executable
    decode: Executable
    cache: StaticKVCache
    cuda_graphs: bool = False
    _runner: object = None
    _runner_alloc: int = -1
    # one entry per CUDA graph captured, across cache allocations (CUDAGraphRunner.captures): batch, length
    # bucket (the capacity), host seconds of warm-up and capture
    captures: list = field(default_factory=list)

    @property
    def meta(self) -> dict:
        return self.prefill_graph.meta["kv_cache"]

    def decode_step(self, inputs: list[torch.Tensor], state: dict[str, torch.Tensor], length: int) -> torch.Tensor:
        """One decode step; ``length`` bounds the filled cache (picks the CUDA graph bucket).

        With CUDA graphs the returned logits are the graph's own buffer, valid until the next step."""
        if not (self.cuda_graphs and inputs[0].is_cuda):
            return _run(self.decode, self.decode_graph, inputs, state)
        from membound.backends.cuda_graphs import CUDAGraphRunner

        if length > self.cache.max_len:
            raise AssertionError(f"decode step at cache length {length} past the capacity {self.cache.max_len}")
        if self._runner is None or self._runner_alloc != self.cache.allocations:
            # the logits are sampled before the next replay overwrites them (token_loop), so they are
            # handed out uncopied: a clone per token would be one more kernel per step for nothing.
            # One bucket, the capacity: a graph is valid for any filled length up to it.
            # After the first capture every kernel is compiled: one warm-up run (it makes the new capture
            # stream's split counters, outside the capture) is all a re-capture for a grown cache needs.
            # input 2, the row index the logits are taken at (zeros at decode), is one tensor for a whole call:
            # copied into the graph once, not every token
            self._runner = CUDAGraphRunner(lambda key: self.decode, copy_outputs=False,
                                           length_buckets=(self.cache.max_len,),
                                           warmup=2 if self._runner is None else 1, captures=self.captures,
                                           constant_inputs=(2,))
            self._runner_alloc = self.cache.allocations
        self.decode_graph.tensors.update(state)
        # a capture runs the step before capturing it (the warm-ups, CapturedGraph): each run advances a
        # recurrence's state, read and written in place, so the states (and the convolutions' rings, small) are
        # restored after the capture and the replay starts where the last step left them
        meta = self.meta
        preserve = [state[n] for n in (*meta.get("scan_states", ()), *meta.get("conv_states", {})) if n in state]
        (logits,) = self._runner(inputs, length=length, preserve=preserve)  # type: ignore[operator]
        return logits


def split_prompts(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """Each row's real tokens (left or right padding removed according to ``attention_mask``)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return list(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    rows = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]
    for i, r in enumerate(rows):
        if r.numel() == 0:
            raise ValueError(f"row {i} of attention_mask selects no tokens")
    return rows


def sample(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float],
           generator: Optional[torch.Generator]) -> torch.Tensor:
    """Next token per row from ``logits [B, V]``: greedy when temperature is 0, else sampled."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode_loop(program: KVProgram, input_ids: torch.Tensor, max_new_tokens: int, *,
                attention_mask: Optional[torch.Tensor] = None, temperature: float = 0.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                eos_token_id: Optional[Union[int, Sequence[int]]] = None, pad_token_id: Optional[int] = None,
                max_cache_len: Optional[int] = None, stream: Optional[Callable[[torch.Tensor], None]] = None,
                generator: Optional[torch.Generator] = None, process: Optional[Processor] = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` per row; returns ``cat([input_ids, new_tokens], dim=1)``."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = input_ids.device
    prompts = split_prompts(input_ids, attention_mask)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    longest = int(lengths.max())
    needed = longest + max_new_tokens
    limit, why = capacity_limit(program.prefill_graph, max_cache_len)
    if limit is not None and needed > limit:
        raise CacheCapacityError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = {needed} "
                                 f"positions exceed the limit of {limit}: {why}")
    if max_new_tokens == 0:
        return input_ids
    with exclusive(program, "generate"):
        return _decode(program, input_ids, prompts, lengths, max_new_tokens, needed, limit,
                       max_cache_len is not None, temperature=temperature, top_k=top_k, top_p=top_p,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id, stream=stream, generator=generator,
                       process=process)


def _decode(program: KVProgram, input_ids: torch.Tensor, prompts: list[torch.Tensor], lengths: torch.Tensor,
            max_new_tokens: int, needed: int, limit: Optional[int], reserve: bool, *, temperature: float,
            top_k: Optional[int], top_p: Optional[float], eos_token_id: Optional[Union[int, Sequence[int]]],
            pad_token_id: Optional[int], stream: Optional[Callable[[torch.Tensor], None]],
            generator: Optional[torch.Generator], process: Optional[Processor] = None) -> torch.Tensor:
    device = input_ids.device
    batch, longest = len(prompts), int(lengths.max())
    # allocates before it swaps: a failure here leaves the cache (and its CUDA graphs) as they were
    program.cache.ensure(batch, needed, limit=limit, reserve=limit if reserve else None)
    state = program.cache.views(batch)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)

    # prefill: prompts right-padded to the longest; each row's junk slots beyond its length are
    # overwritten by its own decode steps before any query can see them (query p reads slots <= p)
    tokens = torch.full((batch, longest), pad, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    positions = torch.arange(longest, device=device).expand(batch, longest).contiguous()
    if (program.meta.get("rings") or program.meta.get("conv_states")) and len({len(p) for p in prompts}) > 1:
        # a ring cache (a sliding-window layer's, a convolution's state) has no slots to spare past a row's
        # prompt: a padding token at position p would overwrite p - W, which the row's next tokens still see.
        # All of a row's padding goes to its first free position instead (the slot its first decode step
        # overwrites); no real query sees it
        positions = torch.minimum(positions, lengths[:, None])
    logits = _run(program.prefill, program.prefill_graph, [tokens, positions, lengths - 1], state)

    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    # row r's i-th new token sits at position lengths[r] + i: every step's positions made at once (row i of
    # steps_pos, contiguous), not an add kernel per token
    steps_pos = torch.arange(max(max_new_tokens, 1), device=device)[:, None] + lengths[None, :]

    def step(i: int, tokens: torch.Tensor) -> torch.Tensor:
        return program.decode_step([tokens[:, None], steps_pos[i][:, None], zeros], state, longest + i + 1)

    new = token_loop(logits, step, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos=eos,
                     pad=pad, stream=stream, generator=generator, process=process)
    return torch.cat([input_ids, new.to(input_ids.dtype)], dim=1)


def token_loop(logits: torch.Tensor, step: Callable[[int, torch.Tensor], torch.Tensor], max_new_tokens: int, *,
               temperature: float, top_k: Optional[int], top_p: Optional[float], eos: set[int], pad: int,
               stream: Optional[Callable[[torch.Tensor], None]], generator: Optional[torch.Generator],
               process: Optional[Processor] = None) -> torch.Tensor:
    """Sample from ``logits [B, S, V]``, feed each token to ``step(i, tokens[B]) -> logits``, repeat.

    ``process(logits [B, V]) -> logits`` edits each step's logits before sampling (repetition penalty,
    a minimum length: ``membound.generation`` builds one from a Hugging Face ``GenerationConfig``).

    Rows that produced an EOS token emit ``pad`` from then on; the loop ends when every row has, or
    after ``max_new_tokens``. Returns the new tokens ``[B, n]``.
    """
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    eos_ids = torch.tensor(sorted(eos), device=logits.device) if eos else None
    # greedy decoding whose stream (if any) may see extra all-pad steps reads "every row finished" without waiting
    # for the device (AllFinished); sampling keeps the exact stop (the generator draws no extra numbers)
    lagged = (AllFinished(logits.device) if eos_ids is not None and temperature == 0.0
              and (stream is None or getattr(stream, "pads_ok", False)) else None)
    out = []
    for i in range(max_new_tokens):
        last = logits[:, -1] if process is None else process(logits[:, -1])
        nxt = sample(last, temperature, top_k, top_p, generator)
        if eos_ids is not None:  # without EOS ids no row ever finishes: no padding kernels per token
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        out.append(nxt)
        if stream is not None:
            stream(nxt)
        if eos_ids is not None:
            finished |= torch.isin(nxt, eos_ids)
            if lagged is None:
                if bool(finished.all()):  # a host sync a token
                    break
            else:
                lagged.push(finished.all())
                if lagged.seen():
                    break
        if i == max_new_tokens - 1:
            break
        logits = step(i, nxt)
    tokens = torch.stack(out, dim=1)
    if lagged is not None and (first := lagged.first_finished()) is not None:
        # the steps after the one that finished the last row emitted only pads: cut them, so the result is the
        # exact stop's
        tokens = tokens[:, :first + 1]
    return tokens


class AllFinished:
    """Whether every row has finished, as the host can know it without waiting for the device: each step's flag is
    copied into pinned host memory behind an event (a ring of ``slots``); :meth:`seen` reads the flags whose copies
    have completed, in order. On a GPU that runs a step or two behind the host, the loop learns of the last EOS
    that many steps late (those steps emit pads, cut afterwards) instead of stopping the host each token until the
    device catches up; on the CPU the copy is done at once. A ring whose every slot is still in flight waits for the
    oldest (a device far behind)."""

    def __init__(self, device: torch.device, slots: int = 8) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(slots, dtype=torch.bool, pin_memory=self.cuda)
        # (step, slot, its copy's event), oldest first
        self.pending: list[tuple[int, int, Optional[torch.cuda.Event]]] = []
        self.steps = 0  # flags pushed
        self.first: Optional[int] = None  # the first step whose flag read true

    @property
    def done(self) -> bool:
        return self.first is not None

    def push(self, flag: torch.Tensor) -> None:
        if len(self.pending) == len(self.host):
            self._read(wait=True)
        slot = self.steps % len(self.host)
        self.host[slot].copy_(flag, non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((self.steps, slot, event))
        self.steps += 1

    def seen(self) -> bool:
        """True once a completed flag says every row has finished."""
        self._read(wait=False)
        return self.done

    def first_finished(self) -> Optional[int]:
        """The first step after which every row had finished (waiting for the flags still in flight), or None."""
        while self.pending and not self.done:
            self._read(wait=True)
        return self.first

    def _read(self, wait: bool) -> None:
        while self.pending:
            step, slot, event = self.pending[0]
            if event is not None and not event.query():
                if not wait:
                    return
                event.synchronize()
            self.pending.pop(0)
            if self.first is None and bool(self.host[slot]):
                self.first = step
            wait = False


def _run(executable: Executable, graph: Graph, inputs: list[torch.Tensor], state: dict[str, torch.Tensor]
         ) -> torch.Tensor:
    graph.tensors.update(state)  # state values bind to this call's cache views (by reference)
    (logits,) = executable(inputs)
    return logits


def recompute_loop(model: Callable[..., object], input_ids: torch.Tensor, max_new_tokens: int, *,
                   attention_mask: Optional[torch.Tensor] = None, temperature: float = 0.0,
                   top_k: Optional[int] = None, top_p: Optional[float] = None,
                   eos_token_id: Optional[Union[int, Sequence[int]]] = None, pad_token_id: Optional[int] = None,
                   stream: Optional[Callable[[torch.Tensor], None]] = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Full recomputation per token, row by row (the O(S)-per-token baseline and the test oracle)."""
    prompts = split_prompts(input_ids, attention_mask)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    rows = [p.clone() for p in prompts]
    done = [False] * len(rows)
    out: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        step = []
        for i, r in enumerate(rows):
            if done[i]:
                step.append(pad)
                continue
            res = model(r[None])
            logits = res if isinstance(res, torch.Tensor) else res.logits
            tok = int(sample(logits[:, -1], temperature, top_k, top_p, generator)[0])
            step.append(tok)
            rows[i] = torch.cat([r, r.new_tensor([tok])])
            done[i] = tok in eos
        for i, t in enumerate(step):
            out[i].append(t)
        if stream is not None:
            stream(torch.tensor(step, device=input_ids.device))
        if eos and all(done):
            break
    new = torch.tensor(out, dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([input_ids, new], dim=1)


def carried_cache_loop(model: Callable[..., object], position_kw: str, input_ids: torch.Tensor, max_new_tokens: int,
                       *, attention_mask: Optional[torch.Tensor] = None, temperature: float = 0.0,
                       top_k: Optional[int] = None, top_p: Optional[float] = None,
                       eos_token_id: Optional[Union[int, Sequence[int]]] = None, pad_token_id: Optional[int] = None,
                       stream: Optional[Callable[[torch.Tensor], None]] = None,
                       generator: Optional[torch.Generator] = None, process: Optional[Processor] = None
                       ) -> torch.Tensor:
    """Decode a model that carries its own static cache: ``model(ids, **{position_kw: positions[S]})``.

    Hugging Face's exportable static-cache module and gpt-fast-style models write K/V into their own
    buffers at the given positions (one position vector for the whole batch), so every row must have
    the same prompt length.
    """
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(f"this model carries its own cache with one `{position_kw}` for the whole batch: all rows "
                         f"must have the same prompt length (no padding); decode rows of different lengths "
                         f"separately, or use a cache-less model so membound inserts a per-row cache")
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    device = input_ids.device
    seq = input_ids.shape[1]

    def logits_of(res: object) -> torch.Tensor:
        return res if isinstance(res, torch.Tensor) else res.logits  # type: ignore[attr-defined]

    if max_new_tokens <= 0:
        return input_ids
    logits = logits_of(model(input_ids, **{position_kw: torch.arange(seq, device=device)}))

    def step(i: int, tokens: torch.Tensor) -> torch.Tensor:
        return logits_of(model(tokens[:, None], **{position_kw: torch.tensor([seq + i], device=device)}))

    new = token_loop(logits, step, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos=eos,
                     pad=pad, stream=stream, generator=generator, process=process)
    return torch.cat([input_ids, new.to(input_ids.dtype)], dim=1)
