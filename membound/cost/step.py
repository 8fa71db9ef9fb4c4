"""The time of one compiled step, launch by launch: kernels replayed from a CUDA graph, with or without PDL.

``roofline.py`` prices a kernel that runs alone. A compiled decode step is a chain of a hundred or more
kernels of a few microseconds each, replayed from one CUDA graph; what is left between the sum of
their bytes over the bandwidth and the measured step is fixed costs, counted here per launch:

    step     = loop + sum over launches (gap + work)
    work     = max(FLOPs / (peak * compute_efficiency), fixed + bytes / (bandwidth * efficiency),
                   fixed + serial * per_serial)
    gap      = graph_gap                                   (CUDA graph)
             = graph_gap - min(pdl_overlap, graph_gap + fixed)   (CUDA graph, a kernel that takes part in PDL)
             = eager_gap on the GPU, eager_launch on the host  (no graph: the step is host-bound when the
                                                               host's launches take longer than the GPU)
    loop     = graph_launch + loop_kernels * (eager_gap + loop_kernel)   (per token, outside the graph)

* ``work``: each launch's own time. Its *kind* (our register GEMV, the tensor-core small-M path, a
  fused kernel of ours, decode attention, cuBLAS...) has a :class:`KernelPrior`: a fixed time (a tiny
  kernel's whole life; a GEMV's pipeline fill and drain, its last program's split-K reduction) and
  the fraction of the read bandwidth its steady state reaches. A kernel whose few programs each stream a
  short chain of tiles (flash-decoding at a short context) is bound by that chain's latency instead:
  ``serial`` (the work's count of dependent memory round trips: tiles one program streams in series, plus
  the merge's) times the kind's ``per_serial``.
* ``gap``: between one kernel's end and the next one's start in a replayed graph. With programmatic
  dependent launch (PDL) the next kernel is launched while the previous one finishes and its first
  weight tile is already in flight, so part of its fixed time hides as well (``pdl_overlap`` may exceed
  ``graph_gap``; the hidden time never exceeds the gap plus the kernel's fixed time).
* ``loop``: what ``generate`` does per token outside the graph: sampling (an argmax), the position
  update, the copies into the graph's static input buffers, and the graph launch itself.

The figures are per card (:data:`STEP_PRIORS`), each with the measurement it comes from. What is not
measured on a card is said so in its ``source``. ``step_priors(hardware)`` picks the table for a spec.

    works = [KernelWork("linear %5", "gemv", flops=..., bytes=...), ...]   # backends/triton/step_plan.py
    pred = predict_step(works, Hardware.named("h200"), mode="graph+pdl")
    pred.time_s, pred.launch_count, print(pred.table())
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

from membound.cost.hardware import SPECS, Hardware, match_gpu

MODES = ("graph+pdl", "graph", "eager")


@dataclass(frozen=True)
class KernelPrior:
    """How one kind of kernel departs from bytes / bandwidth inside a compiled step.

    ``fixed`` (s): paid once per launch on the memory side (a tiny kernel's whole time); ``efficiency``:
    the fraction of the card's *read* bandwidth (``x.sum()`` over 2 GiB, measured in the same run as the
    kernel) its steady state streams at; ``compute_efficiency``: the
    fraction of the precision's peak FLOP rate it reaches when compute-bound; ``pdl``: whether it takes
    part in programmatic dependent launch (membound's Triton kernels do; cuBLAS and torch kernels do
    not). ``source``: what was measured.
    """

    fixed: float
    efficiency: float = 1.0
    compute_efficiency: float = 0.7
    pdl: bool = True
    source: str = ""
    per_serial: float = 0.0  # seconds per unit of a work's ``serial`` latency chain (0: no latency term)

    def __post_init__(self) -> None:
        if self.fixed < 0 or self.efficiency <= 0 or self.compute_efficiency <= 0 or self.per_serial < 0:
            raise ValueError(f"KernelPrior: fixed >= 0, efficiency > 0, compute_efficiency > 0 required, got {self}")


@dataclass(frozen=True)
class LaunchPrior:
    """Launch costs of a step, in seconds (see the module docstring for where each term enters).

    ``graph_gap``: one kernel's end to the next one's start in a replayed CUDA graph; ``pdl_overlap``:
    what programmatic dependent launch hides per launch; ``eager_launch``: host time per launch without a
    graph (Python launcher, argument checks, driver); ``eager_gap``: the GPU-side gap between kernels
    launched one by one when the host runs ahead; ``graph_launch``: a graph replay's own start;
    ``loop_kernels`` / ``loop_kernel``: kernels ``generate`` launches per token outside the graph and the
    time of each.
    """

    graph_gap: float
    pdl_overlap: float
    eager_launch: float
    eager_gap: float
    graph_launch: float
    loop_kernels: int
    loop_kernel: float
    source: str = ""


@dataclass(frozen=True)
class StepPriors:
    """The launch costs and kernel priors of one card; ``read_bandwidth`` (bytes/s) is the card's typical
    ``x.sum()`` read bandwidth, which the efficiencies multiply when no measured figure is given;
    ``calibrated_on`` lists the result files (``benches/results/``) behind the figures; the ``decode_e2e``
    ones among them measured whole steps, which the tests check the model against (nothing is fitted to
    them)."""

    card: str
    launch: LaunchPrior
    kernels: Mapping[str, KernelPrior]
    read_bandwidth: float
    calibrated_on: tuple[str, ...] = ()
    note: str = ""

    def kernel(self, kind: str) -> KernelPrior:
        if kind not in self.kernels:
            raise KeyError(f"step priors for {self.card}: no kernel kind {kind!r}; known: {sorted(self.kernels)}")
        return self.kernels[kind]


@dataclass(frozen=True)
class KernelWork:
    """One launch of a step: a name for reports, its kind (a key of ``StepPriors.kernels``), FLOPs, bytes
    that must move, and the precision that sets its FLOP rate."""

    name: str
    kind: str
    flops: float
    bytes: float
    precision: str = "bf16"
    serial: float = 0.0  # dependent round trips one program makes (the prior's per_serial prices them)


@dataclass(frozen=True)
class LaunchTime:
    """One launch as predicted: ``work_s`` (its own time), ``gap_s`` (before it; negative where PDL
    hides part of it), ``bound`` ("memory", "compute" or "latency": see work_time)."""

    work: KernelWork
    work_s: float
    gap_s: float
    bound: str

    @property
    def time_s(self) -> float:
        return self.gap_s + self.work_s


@dataclass
class StepPrediction:
    """The predicted step. ``gpu_s``: launches plus the per-token loop on the GPU; ``host_s``: the host's
    launch time (only without a graph); ``time_s``: the larger of the two."""

    mode: str
    card: str
    launches: list[LaunchTime]
    loop_s: float
    host_s: float = 0.0
    label: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def launch_count(self) -> int:
        return len(self.launches)

    @property
    def work_s(self) -> float:
        return sum(x.work_s for x in self.launches)

    @property
    def gap_s(self) -> float:
        return sum(x.gap_s for x in self.launches)

    @property
    def bytes(self) -> float:
        return sum(x.work.bytes for x in self.launches)

    @property
    def gpu_s(self) -> float:
        return self.work_s + self.gap_s + self.loop_s

    @property
    def time_s(self) -> float:
        return max(self.gpu_s, self.host_s)

    def by_kind(self) -> dict[str, dict[str, float]]:
        """``kind -> {launches, bytes, time_s}`` (time = gap + work)."""
        out: dict[str, dict[str, float]] = {}
        for x in self.launches:
            row = out.setdefault(x.work.kind, {"launches": 0, "bytes": 0.0, "time_s": 0.0})
            row["launches"] += 1
            row["bytes"] += x.work.bytes
            row["time_s"] += x.time_s
        return out

    def summary(self) -> str:
        """One line: mode, launches, predicted time, and where it goes."""
        text = (f"{self.label + ': ' if self.label else ''}{self.mode} on {self.card}: {self.launch_count} launches, "
                f"predicted {self.time_s * 1e3:.3f} ms (kernels {self.work_s * 1e3:.3f} ms, gaps "
                f"{self.gap_s * 1e3:+.3f} ms, per-token loop {self.loop_s * 1e6:.1f} us")
        if self.host_s:
            text += f", host launches {self.host_s * 1e3:.3f} ms"
        return text + f"; {self.bytes / 1e9:.3f} GB)"

    def table(self) -> str:
        """The summary line and a per-kind breakdown."""
        lines = [self.summary(), f"  {'kind':22s} {'launches':>8s} {'MB':>10s} {'us':>10s} {'share':>6s}"]
        total = self.gpu_s or 1.0
        for kind, row in sorted(self.by_kind().items(), key=lambda kv: -kv[1]["time_s"]):
            lines.append(f"  {kind:22s} {int(row['launches']):8d} {row['bytes'] / 1e6:10.2f} "
                         f"{row['time_s'] * 1e6:10.1f} {100 * row['time_s'] / total:5.1f}%")
        lines.append(f"  {'loop (per token)':22s} {'':8s} {'':10s} {self.loop_s * 1e6:10.1f} "
                     f"{100 * self.loop_s / total:5.1f}%")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the terms
# ---------------------------------------------------------------------------------------------
def read_bandwidth(hardware: Hardware, priors: "StepPriors") -> float:
    """The read bandwidth the efficiencies multiply: measured on ``hardware`` (a calibrated spec) if it was,
    else the priors' figure for the card (``step_priors`` scales it for a card without its own table)."""
    measured = hardware.measured.get("read_bandwidth")
    return float(measured) if measured else priors.read_bandwidth


def work_time(work: KernelWork, prior: KernelPrior, hardware: Hardware, bandwidth: float) -> tuple[float, str]:
    """(seconds, bound) of one launch's own work: max(compute, fixed + bytes / (bandwidth * efficiency),
    fixed + serial * per_serial), ``bandwidth`` being the read bandwidth (``read_bandwidth``); bound is
    "compute", "memory" or "latency"."""
    compute = work.flops / (hardware.peak_flops(work.precision) * prior.compute_efficiency) if work.flops else 0.0
    memory = prior.fixed + work.bytes / (bandwidth * prior.efficiency)
    latency = prior.fixed + work.serial * prior.per_serial
    if latency > memory and latency > compute:
        return latency, "latency"
    return (compute, "compute") if compute > memory else (memory, "memory")


def launch_gap(mode: str, launch: LaunchPrior, prior: KernelPrior) -> float:
    """The GPU time before one launch (see the module docstring): the graph gap, less what PDL hides."""
    check_mode(mode)
    if mode == "eager":
        return launch.eager_gap
    if mode == "graph+pdl" and prior.pdl:
        return launch.graph_gap - min(launch.pdl_overlap, launch.graph_gap + prior.fixed)
    return launch.graph_gap


def loop_time(mode: str, launch: LaunchPrior) -> float:
    """The per-token GPU time of ``generate``'s loop outside the step: its kernels and, with a graph, the
    replay's own start."""
    check_mode(mode)
    kernels = launch.loop_kernels * (launch.eager_gap + launch.loop_kernel)
    return kernels + (0.0 if mode == "eager" else launch.graph_launch)


def host_time(mode: str, launch: LaunchPrior, launches: int, loop: bool = True) -> float:
    """Host time to issue the step: 0 with a graph (one replay call, far shorter than the step), else one
    Python launch per kernel, plus the loop's own launches when ``loop``."""
    check_mode(mode)
    if mode != "eager":
        return 0.0
    return (launches + (launch.loop_kernels if loop else 0)) * launch.eager_launch


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"step mode must be one of {MODES}, got {mode!r}")


def predict_step(works: Sequence[KernelWork], hardware: Hardware, priors: Optional[StepPriors] = None, *,
                 mode: str = "graph+pdl", loop: bool = True, label: str = "",
                 bandwidth: Optional[float] = None) -> StepPrediction:
    """The predicted time of one step made of ``works`` (one per launch, in order) on ``hardware``.

    ``mode``: "graph+pdl" (a replayed CUDA graph whose kernels use programmatic dependent launch: the
    default on Hopper), "graph" (``MEMBOUND_PDL=0`` or an older card) or "eager" (no graph). ``loop``:
    add ``generate``'s per-token work outside the step (False for a step timed alone). ``bandwidth``: the
    read bandwidth measured in the same run, when there is one (default ``read_bandwidth``).
    """
    check_mode(mode)
    priors = priors or step_priors(hardware)
    bw = bandwidth or read_bandwidth(hardware, priors)
    rows = []
    for w in works:
        prior = priors.kernel(w.kind)
        seconds, bound = work_time(w, prior, hardware, bw)
        rows.append(LaunchTime(w, seconds, launch_gap(mode, priors.launch, prior), bound))
    loop_s = loop_time(mode, priors.launch) if loop else 0.0
    pred = StepPrediction(mode, priors.card, rows, loop_s, host_time(mode, priors.launch, len(rows), loop), label)
    if priors.note:
        pred.notes.append(priors.note)
    return pred


# ---------------------------------------------------------------------------------------------
# the figures, per card
# ---------------------------------------------------------------------------------------------
# Measurements the priors below come from (files in benches/results/ unless said otherwise):
#  [QM]  quant_matmul-nvidia-h200-2026-12-01.json: our bf16 `linear` / `gated_linear` and cuBLAS at the
#        Llama decode shapes, back-to-back over weight copies streamed from HBM, replayed from a CUDA graph
#        with PDL on (so each time includes one graph gap less the PDL overlap: -0.51 us, added back here).
#        Least-squares line time = fixed + bytes / (4274 GB/s * efficiency) over the 5 shapes:
#        M=1 linear: 2.46 us + 0.904 of read bandwidth (residuals within 7%); M=1 gated: 2.56 us + 0.833;
#        M=32 cuBLAS: 5.01 us + 0.966.
#  [QD]  quant_matmul-nvidia-h200-2026-12-02-m64-dequant-kernel.json: M=64 rows after the dequantization became
#        one Triton kernel (quant_dequant.py); dequant+cublas less cublas bf16 per shape (read bandwidth 4262).
#  [P1]  profile_step-llama-1b-triton-graphs-{nopdl,pdl}-nvidia-h100-80gb-hbm3-2026-11-26.txt with
#        devruns-nvidia-h100-80gb-hbm3-2026-11-26.txt (H100; no H200 kernel profile of the current step
#        exists yet): 1.24B b1 step at context 256, 134 kernels (131 in the graph + 3 input copies):
#        1.29 ms wall without PDL against 1.246 ms of summed kernel time -> 0.33 us between kernels;
#        1.18 ms with PDL -> PDL saves 0.84 us per launch. Kernel durations without PDL: fused
#        add+rms_norm 1.80 us, rope+cache-write sections 1.46, embedding+norm 2.53, rope table 2.21, final
#        norm 1.98 (all a few KB: fixed time); flash decoding 6.59 us over 0.52 MB of K/V; input copy 1.25.
#  [QL] quant_gemv_paths-nvidia-h200-2026-12-02-layer2.json, bf16 rows: our linear / gated_linear at the
#        8B decode projections, M=1 and M=16, 8 weight copies per op in one CUDA graph, 20 replays (no read
#        bandwidth recorded: efficiencies over the typical 4168 GB/s). Its M=1 rows agree with [QM]'s line
#        within 12% (qkv 17.3 us vs 15.5, o 10.4 vs 11.2, gate_up 62.9 vs 63.3, head 265 vs 274, gated
#        down 35.3 vs 35.6).
#  [E2] decode_e2e-nvidia-h200-2026-12-01-quant.json (membound triton+graphs, bf16, prompt 128, 128 new
#        tokens; whole generate calls): 1.24B b1 147.9 ms, b8 202.3 ms; 8B b1 623.6 ms, b8 983.2 ms. The
#        model was checked against it until [S3]: its b8 steps ran the gated tensor-core GEMV before PRE_GATE.
#  [E1] decode_e2e-nvidia-h200-2026-11-26.json, "membound triton" (no CUDA graph) rows: 1.24B b1 10.4 ms
#        a token over the 262 launches that step had then (profile_step ... h200 ... session-start.txt):
#        ~40 us of host time per launch.
#  [QG] quant_gemv_paths-nvidia-h200-2026-12-02-layer2.json, int8/int4 rows: quant_linear (down projection:
#        quant_gated_linear) at the 8B decode projections as in [QL]; modes tc (int8 on tensor cores at M=1,
#        M padded to 16: today's int8 path), gemv (the FMA GEMV), m16 (M=16) and m16-old (int4 tensor cores
#        over words, without the pairs kernel). Its M=16 gated rows predate PRE_GATE (below) and are left out.
#  [IP] int4_pairs_paths-nvidia-h200-2026-12-02.json: the int4 pairs kernel (today's int4 path at every
#        decode M with bf16 x) at M=1, the 8B projections, group 128, CUDA graph (read probe 4376 GB/s).
#  [QS] quant_matmul-sweep-nvidia-h200-2026-12-02.json, its "heuristic" rows: int8 (tensor cores) and int4
#        (pairs) at M=1 with pick_config's tiles, the 8B projections (o included; read probe 4265 GB/s).
#  The quantized fits: time = fixed + bytes / (read_bw * efficiency), least squares on the relative residuals
#  (shapes of 9 MB and of 0.5 GB weigh alike), bytes as the op counts them (packed weight + scales, x, y;
#  both inputs of the gated op): benches/experiments/step_calibration.py --fit prints each fit and its rows.
#  [S3] decode_e2e-nvidia-h200-2026-12-02-session3.json (bf16, int8, int4 at 1.24B and 8B, batch 1 and 8;
#        the step measured as (call - a call of half the tokens) / the tokens between). Nothing is fitted to
#        it: it checks the model (tests/cost/test_step_prediction.py; step_calibration.py prints the table).
#  [PS] profile_step-quick-nvidia-h200-2026-12-02.json: per-launch H200 profile of whole decode steps (HF
#        Llama at the 1.24B and 8B shapes, b1 and b8, context 256, CUDA graph with PDL): each launch's gap +
#        duration (its share of the step, PDL overlap included) + 0.51 us (the gap PDL removes: the work),
#        medians per shape, bytes from the built-in Llama's launches; no read probe: over the typical 4168
#        GB/s. step_calibration.py --fit prints the fits. Its b1 rows confirm [QM]'s GEMV lines in the step
#        (gemv 2.06 us + 0.918, gemv_gated 3.03 us + 0.828).
#  [PL] profile_step-quick-decode-layer-nvidia-h200-2026-12-05-session20.json: the decode-layer step (one
#        attention_block and one mlp_block a layer) profiled as [PS], H200, Triton 3.6; kernel durations (PDL
#        waits included), bytes as the ops count them (weights, and the K/V cache at context 256).
#  [MO] moe_decode_tiles-nvidia-h200-2026-12-02-session7-maxnreg-64.json: one moe op (router, top-k, the gate/up and
#        down kernels with the routing and the combine in them) at the Mixtral-8x7B layer, bf16, CUDA graph.
#  [GT] gemv_sweep-tc-nvidia-h200-2026-12-02-session8.json: bf16 tensor-core tile grid and cuBLAS at M = 8, 16,
#        32 over the ten 1.24B / 8B projections (CUDA-graph replay, read bandwidth 4239 GB/s).
#  [SW] gemv_sweep-tc-swap-nvidia-h200-2026-12-03.json: the swapped tensor-core GEMV's grid at M = 1 and 8 over the
#        1.24B / 8B q/k/v, o, merged gate/up (linear_glu), down and head projections (CUDA-graph replay, 4210 GB/s).
#  [RS] gemv_sweep-resident-nvidia-h200-2026-12-03-session13.json: the resident register tiles' grid at M = 1 and 8
#        over the 1.24B / 8B q/k/v, o, linear_glu and head (CUDA-graph replay, read bandwidth 4260 GB/s).
#  [RW] gemv_sweep-resident-nvidia-h200-2026-12-03-session14-row.json: the same grid at M = 1 with each config's
#        one-row form (LinearConfig.row) over the same eight shapes (CUDA-graph replay, read bandwidth 4213 GB/s).
#  [RL] gemv_sweep-resident-nvidia-h200-2026-12-03-session14-rowloop.json: the one-row forms at M = 1 (resident and
#        the register loop's) over the 1.24B / 8B q/k/v, o, linear_glu, head and down (graph replay, 4213 GB/s).
#  [AT] attention-nvidia-h200-2026-12-01-quick.json: our decode attention at batch 16, 32k cached
#        positions streams at 83% of read bandwidth (the fixed part is negligible there).
_H200_LAUNCH = LaunchPrior(
    graph_gap=0.33e-6, pdl_overlap=0.84e-6, eager_launch=40e-6, eager_gap=1.0e-6, graph_launch=3.0e-6,
    loop_kernels=5, loop_kernel=2.0e-6,
    source="graph gap and PDL overlap [P1] (H100, assumed equal on H200); eager launch [E1]; loop: argmax, "
           "position add and 3 input copies per token (copies 1.25 us in [P1]), graph start unmeasured (3 us)")

_GAP_PDL = _H200_LAUNCH.graph_gap - _H200_LAUNCH.pdl_overlap  # what each [QM] time includes: -0.51 us

_H200_KERNELS: dict[str, KernelPrior] = {
    # our register GEMV (M <= 2): [QM] M=1 linear
    "gemv": KernelPrior(fixed=2.46e-6 - _GAP_PDL, efficiency=0.904, source="[QM] linear M=1, 5 shapes"),
    "gemv_gated": KernelPrior(fixed=2.56e-6 - _GAP_PDL, efficiency=0.833, source="[QM] gated_linear M=1, 5 shapes"),
    # the tensor-core path (2 < M <= 16), in the step: [PS] b8 (the 1.24B and 8B projections, 4 shapes each):
    # 4.43 us + 0.949 (residuals -16..+12%). The per-op graphs said less of the step: [QL] M=16 6.2 us + 0.83
    # (a line through o and gate_up), [QM] M=16 5.8 us + 0.69.
    # the swapped tensor-core product (kernels/linear.py's LinearConfig.swap: W the MMA's A operand), at 3 <= M
    # <= 16 and for the large / long-K weights at M <= 2: [SW] its picked config on the ten 1.24B / 8B
    # projections at M = 1 and 8 (20 times, each op alone): 3.35 us + 0.996 of the typical 4168 GB/s (-5..+6%).
    # In the step (decode_e2e-nvidia-h200-2026-12-03-session12-swap) the whole-step prediction with it is 1.05x
    # the measured 8B b8 step, 1.10x b1, 1.08x 1.24B b8 and 1.16x b1: inside a PDL chain the small GEMVs overlap
    # more than this per-op line says
    "gemv_swap": KernelPrior(fixed=3.35e-6 - _GAP_PDL, efficiency=0.996,
                             source="[SW] swapped GEMV, M=1 and 8, 10 shapes"),
    # the resident register tiles (kernels/linear.py's LinearConfig.resident: a program's whole K range loaded
    # before the PDL wait), M <= 2, K <= 4096, weights of at most 8M values: [RS] the 1.24B q/k/v 5.0 us at 12.6 MB
    # and o 4.3 at 8.4 MB (their picked tiles) at gemv's efficiency: 1.66 us + 0.904 (o: 3.89 predicted)
    "gemv_resident": KernelPrior(fixed=1.66e-6 - _GAP_PDL, efficiency=0.904,
                                 source="[RS] resident tiles, M=1, 1.24B q/k/v and o"),
    # their one-row form (LinearConfig.row: x a vector against the 2-D tile), the library's choice at M = 1 for
    # every weight with K <= 4096: [RW] the picked tiles on the eight shapes (8-1051 MB), the line fitted to
    # relative error: 1.23 us + 1.017 of the typical 4168 GB/s (residuals -7..+5%)
    "gemv_row": KernelPrior(fixed=1.23e-6 - _GAP_PDL, efficiency=1.017,
                            source="[RW] resident one-row tiles, M=1, 1.24B / 8B q/k/v, o, linear_glu, head"),
    # the register loop's one-row form (LinearConfig.row, not resident), the library's choice at M = 1 past
    # K = 4096 (the down projections): [RL] its 4 x 1024 tile on the eight shapes (8-1051 MB), the line fitted to
    # relative error: 1.57 us + 0.993 (residuals -10..+6%)
    "gemv_row_loop": KernelPrior(fixed=1.57e-6 - _GAP_PDL, efficiency=0.993,
                                 source="[RL] one-row register loop, M=1, 1.24B / 8B projections and down"),
    "gemv_dot": KernelPrior(fixed=4.43e-6, efficiency=0.949, source="[PS] linear at b8, 1.24B and 8B, 8 shapes"),
    # gated_linear on tensor cores: each program forms silu(gate) * up once for the real rows into a scratch,
    # then runs gemv_dot's loop (PRE_GATE, a66c1ba; on since 65f9138). In the step: [PS] b8 down projections,
    # 1.24B 26.1 us at 33.9 MB and 8B 65.5 us at 118 MB: 10.3 us + 0.512 (the line through both). The [QL]
    # M=16 row (102.9 us at 117.5 MB, 0.29) gated all 16 padded rows inside the loop, before PRE_GATE.
    "gemv_dot_gated": KernelPrior(fixed=10.26e-6, efficiency=0.512, source="[PS] gated_linear at b8, 1.24B and 8B"),
    # cuBLAS (M > 16: prefill, large batches); compute at 703 of 989 TFLOP/s (cost_model-nvidia-h200-2026-11-26)
    "cublas": KernelPrior(fixed=5.01e-6 - _H200_LAUNCH.graph_gap, efficiency=0.966, compute_efficiency=0.71,
                          pdl=False, source="[QM] cuBLAS M=32; bf16 matmul 703 TFLOP/s"),
    # cuBLAS at 3 <= M <= 16 where the library prefers it to the tensor-core GEMV (kernels/linear.py's
    # prefers_cublas: K >= 3N, the down projections). It splits K and sums the partials in a second kernel
    # (counted here as one launch). Alone ([GT] M=8 and 16) the 1.24B and 8B down projections took 18.0 / 18.4 us
    # at 33.6 MB, 38.5 / 39.1 us at 117.5 MB (9.8 us + 0.965); inside the step ([PS] 2026-12-03, b8, both kernels'
    # gap + duration) 12.8 and 31.8 us: 4.2 us + the full read bandwidth (-4%, +2%), the graph gap included.
    "cublas_gemv": KernelPrior(fixed=4.2e-6 - _H200_LAUNCH.graph_gap, efficiency=1.0, compute_efficiency=0.71,
                               pdl=False, source="[PS] 2026-12-03 cuBLAS split-K + reduce in the step, b8 x2"),
    # quantized GEMVs, one kind per path and scheme of kernels/quant_matmul.py (backends/triton/step_plan.py's
    # quant_kind; fits: step_calibration.py --fit; each fixed time + 0.51 us as for [QM]). At decode with
    # bf16 x, int8 and fp8 run the tensor-core kernel (M padded to 16) and int4 the pairs kernel at every M.
    # int8 tensor cores: [QG] tc M=1 (5 shapes) and m16 M=16 (4), [QS] int8 (5): 5.29 us + 0.819 of the
    # typical 4168 GB/s, residuals -16..+15%
    "quant_dot_int8": KernelPrior(fixed=5.29e-6 - _GAP_PDL, efficiency=0.819,
                                  source="[QG] int8 tc M=1 x5 + m16 M=16 x4; [QS] int8 M=1 x5"),
    # int4 pairs: [IP] M=1 (5 shapes, gated down included) and [QS] int4 (5): 5.47 us + 0.497 of the typical
    # 4168 GB/s, -13..+13%; M <= 16 pads to the same 16 rows, 17..32 to 32 (untimed)
    "quant_pairs_int4": KernelPrior(fixed=5.47e-6 - _GAP_PDL, efficiency=0.497,
                                    source="[IP] int4 pairs M=1 x5; [QS] int4 M=1 x5"),
    # fp8 tensor cores: [QM] M=4 and 16 (5 shapes each; the tensor-core kernel then as now): 4.39 us + 0.900
    # of 4274 GB/s, -3..+3%
    "quant_dot_fp8": KernelPrior(fixed=4.39e-6 - _GAP_PDL, efficiency=0.900, source="[QM] fp8 M=4, 16 x5 shapes"),
    # the FMA GEMV (M <= 2 where tensor_cores_at_gemv says no, or the pairs kernel is off / x is fp32):
    # [QG] gemv M=1 of 4168 GB/s: int8 2.35 us + 0.457 (-21..+12%), int4 1.86 us + 0.207 (-7..+5%); [QM] fp8
    # M=1 (the FMA GEMV then) 2.91 us + 0.468 of 4274 GB/s (-23..+13%)
    "quant_gemv_int8": KernelPrior(fixed=2.35e-6 - _GAP_PDL, efficiency=0.457, source="[QG] int8 gemv M=1 x5"),
    "quant_gemv_int4": KernelPrior(fixed=1.86e-6 - _GAP_PDL, efficiency=0.207, source="[QG] int4 gemv M=1 x5"),
    "quant_gemv_fp8": KernelPrior(fixed=2.91e-6 - _GAP_PDL, efficiency=0.468, source="[QM] fp8 M=1 x5"),
    # int4 on tensor cores over words (no pairs kernel: fp32 x, or INT4_PAIRS off): [QG] m16-old M=16
    # (4 shapes): 6.01 us + 0.258 of 4168 GB/s (-19..+13%)
    "quant_dot_int4": KernelPrior(fixed=6.01e-6 - _GAP_PDL, efficiency=0.258, source="[QG] int4 m16-old M=16 x4"),
    # prefill (M > 32), the path quant_matmul.prefill_path picks. The fused kernel dequantizes the weight again
    # for every 64-row block of M, so its time grows with M like its FLOPs: [QM] M=64 (5 shapes), 2MNK at a
    # fraction of the bf16 peak (least squares on relative residuals): int8 0.185 (-25..+16%), int4 0.158
    # (-35..+47%), fp8 0.199 (-32..+16%); its memory side (the weight once) at 0.8 never binds there.
    "quant_mma_int8": KernelPrior(fixed=5.0e-6, efficiency=0.8, compute_efficiency=0.185,
                                  source="[QM] int8 fused M=64 x5"),
    "quant_mma_int4": KernelPrior(fixed=5.0e-6, efficiency=0.8, compute_efficiency=0.158,
                                  source="[QM] int4 g128 fused M=64 x5"),
    "quant_mma_fp8": KernelPrior(fixed=5.0e-6, efficiency=0.8, compute_efficiency=0.199, source="[QM] fp8 M=64 x5"),
    # dequantize (quant_dequant.py: one Triton kernel) into a temporary of x's dtype, then cuBLAS
    # (step_plan.dequant_works: two work items, the matmul priced as cublas). The dequantization by the packed
    # weight: [QD] dequant+cublas less cublas bf16 at M=64 (5 shapes; +-30%, the temporary partly stays in
    # L2): int8 3 us + 0.41 of 4262 GB/s, int4 5 us + 0.039 (each element gathers its group's scale and
    # offset). fp8 unmeasured: as int8 (the same loop). Before the kernel (the torch reference, [QM]) it was
    # 0.0338 / 0.0051. quant_matmul.prefill_path reads these priors (measured_rates).
    "quant_dequant_int8": KernelPrior(fixed=3.0e-6, efficiency=0.41, pdl=False,
                                      source="[QD] int8 dequant+cublas - cublas bf16, M=64 x5"),
    "quant_dequant_int4": KernelPrior(fixed=5.0e-6, efficiency=0.039, pdl=False,
                                      source="[QD] int4 g128 dequant+cublas - cublas bf16, M=64 x5"),
    "quant_dequant_fp8": KernelPrior(fixed=3.0e-6, efficiency=0.41, pdl=False,
                                     source="unmeasured: as [QD] int8 dequant+cublas"),
    # flash decoding, one launch (the last split reduces): [AT] bandwidth at long contexts. At short ones its
    # few programs each stream a chain of 32 KB key tiles (serial: step_plan's decode_serial, the kernel's own
    # chunk rule): [PS] 2026-12-03 in the step, context 256 (gap + duration + the PDL share): 2 tiles 6.5 us
    # (1.24B b1) / 7.0 (b8), 4 tiles 13.0 (8B b1) / 16.9 (b8): 0.5 us + 3.5 us a tile (-14..+15%); the merge
    # of a split row block counts as DECODE_MERGE_SERIAL tiles (decode_short_context, H200: 6 us more alone)
    "decode_attention": KernelPrior(fixed=0.5e-6, efficiency=0.83, per_serial=3.5e-6,
                                    source="[PS] 2026-12-03 latency chain, 4 cases; [AT] bandwidth"),
    # a decode layer's attention block as one launch at one row (kernels/attn_block.py). [PL] 2026-12-05 (session
    # 20, H200, Triton 3.6, read bandwidth 4113 GB/s): 27.32 us a layer at the 1.24B shape (21.5 MB of weights and
    # cache), 83.64 at 8B (84.9 MB): a line through both, 8.2 us + 0.274 of the read bandwidth (the guess before
    # was 6 us + 0.8). Triton 3.6 gave the kernel 176 registers a thread (one 8-warp program an SM, where the
    # one-item-per-program grid counts on two)
    "attention_block": KernelPrior(fixed=8.2e-6, efficiency=0.274, source="[PL] 2026-12-05 decode-layer step, "
                                                                         "1.24B and 8B b1"),
    # the one-launch MLP block (kernels/mlp_block.py), one row. [PL] 2026-12-05: 48.23 us a layer at 1.24B (100.7 MB),
    # 150.17 at 8B (352.3 MB): 7.45 us + 0.600 of the read bandwidth (the guess before: 4 us + gemv_row's 1.017)
    "mlp_block": KernelPrior(fixed=7.45e-6, efficiency=0.600, source="[PL] 2026-12-05 decode-layer step, 1.24B "
                                                                    "and 8B b1"),
    # prefill flash attention: attention bench prefill rows reach 240-470 of 989 TFLOP/s
    "attention": KernelPrior(fixed=5.0e-6, efficiency=0.8, compute_efficiency=0.35, source="[AT] prefill rows"),
    # generated pointwise / row / sectioned kernels: [P1] 1.5-2.5 us at a few KB; bandwidth unmeasured
    "fused": KernelPrior(fixed=1.7e-6, efficiency=0.8, source="[P1] fused kernel durations; efficiency a guess"),
    # other library kernels (embedding gather, cache write): like a fused kernel
    "library": KernelPrior(fixed=2.0e-6, efficiency=0.8, source="unmeasured: as a fused kernel"),
    # MoE expert kernels (backends/triton/step_plan.py's moe_works splits a moe op into its launches). The decode
    # walk (gate/up, then down): [MO] one moe op at the Mixtral-8x7B layer, bf16, CUDA-graph replay, T = 1 / 8 /
    # 32: 188.9 / 701.6 / 732.2 us, 87.8 / 94.5 / 90.6% of read bandwidth over the active experts, routing
    # launches included; at T = 1 the router and top-k (about 5 us) and two fixed parts of 2.5 us leave 0.94
    "moe_decode": KernelPrior(fixed=2.5e-6, efficiency=0.94, source="[MO] moe op at the 8x7B layer, T = 1/8/32"),
    # the grouped GEMM (prefill, large batches): kernels/moe.py's path model, GROUPED_BW_SHARE and
    # GROUPED_MMA_SHARE (its H200 fits, test_moe_prefill.py's crossovers); the block table is its own launches
    "moe_grouped": KernelPrior(fixed=3.0e-6, efficiency=0.59, compute_efficiency=0.47,
                               source="kernels/moe.py GROUPED_BW_SHARE / GROUPED_MMA_SHARE"),
    # an op run by its torch reference inside the step (one kernel assumed; torch may launch more)
    "torch": KernelPrior(fixed=3.0e-6, efficiency=0.7, pdl=False, source="unmeasured"),
}

# quant_gated_linear: the quant_linear line of its path. The gated op reads gate and up and its kernel forms
# silu(gate) * up before the loop (PRE_GATE: the GEMV and the pairs kernel at every M, the other tensor-core
# tiles from M = 3) or per K tile for the real rows only (X_ROWS, tensor cores at M <= 2). Where timed, the
# gated row lies on the plain line: [QG] int8 tc down_gated -3%, [IP] pairs down_gated 20.44 us vs plain
# down 20.22 (+3% from the line), [QG] int4 gemv -4% (int8 gemv: -21%). fp8 gated and the tensor-core
# tiles' PRE_GATE at M = 3..32 are untimed.
for _kind in ("quant_dot_int8", "quant_pairs_int4", "quant_dot_fp8", "quant_gemv_int8", "quant_gemv_int4",
              "quant_gemv_fp8", "quant_dot_int4"):
    _H200_KERNELS[_kind + "_gated"] = replace(_H200_KERNELS[_kind], source=_H200_KERNELS[_kind].source
                                              + "; gated: the plain line")

STEP_PRIORS: dict[str, StepPriors] = {
    # read bandwidth: /work/shared/BENCHMARKS.md, H200 2026-11-30 (x.sum() over 4 GiB); runs range 4060-4274
    "h200": StepPriors("NVIDIA H200", _H200_LAUNCH, _H200_KERNELS, read_bandwidth=4168e9,
                       calibrated_on=("decode_e2e-nvidia-h200-2026-12-02-session3.json",
                                      "decode_e2e-nvidia-h200-2026-12-03-session9.json",
                                      "profile_step-quick-nvidia-h200-2026-12-03.json",
                                      "quant_matmul-nvidia-h200-2026-12-01.json",
                                      "quant_gemv_paths-nvidia-h200-2026-12-02-layer2.json",
                                      "int4_pairs_paths-nvidia-h200-2026-12-02.json",
                                      "profile_step-quick-nvidia-h200-2026-12-02.json",
                                      "quant_matmul-sweep-nvidia-h200-2026-12-02.json",
                                      "quant_matmul-nvidia-h200-2026-12-02-m64-dequant-kernel.json")),
}


def step_priors(hardware: Hardware) -> StepPriors:
    """The priors for ``hardware``'s card. A card without its own table gets the H200's, with a note, and a
    read bandwidth scaled from its spec as the H200's read figure is to its datasheet (launch costs carry
    over between recent NVIDIA cards; kernel efficiencies less surely)."""
    key = match_gpu(hardware.name, hardware.memory_bytes) if hardware.device_type == "cuda" else None
    if key in STEP_PRIORS:
        return STEP_PRIORS[key]
    base = STEP_PRIORS["h200"]
    scale = base.read_bandwidth / SPECS["h200"].bandwidth
    return replace(base, card=hardware.name, calibrated_on=(), read_bandwidth=hardware.bandwidth * scale,
                   note=f"no step priors measured on {hardware.name}: the H200's launch costs and kernel "
                        f"efficiencies are used with this card's bandwidth and FLOP rates")
