"""The ``membound`` command (also ``python -m membound``).

    membound demo [--model llama-tiny] [--dump-dir DIR]   compile a built-in model, show each pass, check vs eager
    membound generate DIR --prompt "..." [--max-new-tokens N]   stream text from a local HF checkpoint folder
    membound explain MODEL|DIR [--batch --seq-len --cache-len --hardware --out DIR]   roofline tables (and plot)
    membound dump-ir MODEL [--out DIR]                    write the IR after every pass for a built-in model
    membound models                                       list the built-in models
    membound opt FILE.mir -p canonicalize,merge-linear   run passes on IR text, print the result
    membound --version;  -v / -vv (logs: info / debug);  -q (errors only)

A MODEL that is neither a built-in name nor a folder with config.json is one line naming what exists.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _example_ids(model: torch.nn.Module, batch: int, seq: int, device: str) -> torch.Tensor:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (batch, seq), generator=g).to(device)


def cmd_demo(args: argparse.Namespace) -> int:
    import membound
    from membound.models import build_model

    device = _device()
    dtype = torch.float32
    t0 = time.perf_counter()
    model = build_model(args.model, dtype=dtype, device=device).eval()
    ids = _example_ids(model, 2, 16, device)
    print(f"membound demo: {args.model} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {dtype}, input_ids {tuple(ids.shape)}")
    dump_dir = Path(args.dump_dir)
    compiled = membound.compile(model, dump_ir=dump_dir)
    with torch.no_grad():
        t1 = time.perf_counter()
        out = compiled(ids)
        t_compile = time.perf_counter() - t1
        ref = model(ids)
    print(f"\ncaptured {len(compiled.input_ir.nodes)} IR nodes; pipeline:")
    print(f"  {'pass':38s} {'changed':>7s} {'nodes':>13s} {'ms':>8s}")
    for r in compiled.pass_records:
        print(f"  {r.name:38s} {'yes' if r.changed else 'no':>7s} {r.nodes_before:>5d} -> {r.nodes_after:<5d} "
              f"{r.seconds * 1e3:8.1f}")
    ops: dict[str, int] = {}
    for n in compiled.ir.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    print("\nfinal graph ops: " + ", ".join(f"{k}×{v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])))
    print(f"IR after every pass written to {dump_dir.resolve()}/ ({len(list(dump_dir.glob('*.mir')))} files)")

    rel = ((out - ref).norm() / ref.norm()).item()
    ok = rel <= 1e-4
    # a second shape reuses the same capture (B and S are symbolic)
    ids2 = _example_ids(model, 3, 9, device)
    with torch.no_grad():
        rel2 = ((compiled(ids2) - model(ids2)).norm() / model(ids2).norm()).item()
    ok = ok and rel2 <= 1e-4 and compiled.num_captures == 1
    print(f"\nlogits vs eager: rel. error {rel:.2e} at {tuple(ids.shape)}, {rel2:.2e} at {tuple(ids2.shape)} "
          f"(tolerance 1e-4, fp32), captures: {compiled.num_captures}")
    print(f"compile {t_compile:.2f} s")

    # decoding: insert-kv-cache turns the cache-less model into a prefill and an S=1 decode graph
    prompt = _example_ids(model, 2, 12, device)
    t2 = time.perf_counter()
    with torch.no_grad():
        cached = membound.generate(compiled, prompt, 16)
    t_gen = time.perf_counter() - t2
    recomputed = membound.generate(compiled, prompt, 16, kv_cache=False)
    same = torch.equal(cached, recomputed)
    program = compiled._kv_program
    print(f"\nKV cache: {len(program.meta['caches'])} layers cached, state "
          f"{', '.join(str(v.type) for v in program.decode_graph.state[:2])}, ...; decode graph has "
          f"{len(program.decode_graph.nodes)} nodes (prefill {len(program.prefill_graph.nodes)})")
    print(f"generate 16 tokens x 2 rows with the cache: {t_gen:.2f} s; tokens equal full recomputation: {same}")

    from membound.cost import Hardware, RooflineCost, analyze

    hw = Hardware.detect()
    decode = analyze(program.decode_graph, RooflineCost(hw)).decode
    at = decode.at({"B": 1, "T": 1024})
    print(f"roofline on {hw.name}, batch 1, 1024 cached tokens: {at['bytes'] / 1e6:.2f} MB and "
          f"{at['flops'] / 1e6:.2f} MFLOP per token -> {at['bound']}-bound, "
          f"predicted {at['time_s'] * 1e6:.1f} us per token")
    ok = ok and same
    print(f"total {time.perf_counter() - t0:.2f} s")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def cmd_dump_ir(args: argparse.Namespace) -> int:
    import membound
    from membound.models import build_model

    model = build_model(args.model, dtype=torch.float32, device="cpu").eval()
    out = Path(args.out or f"ir-{args.model}")
    compiled = membound.compile(model, dump_ir=out)
    with torch.no_grad():
        compiled(_example_ids(model, 2, 8, "cpu"))
    files = sorted(out.glob("*.mir"))
    print(f"wrote {len(files)} IR files to {out.resolve()}/")
    for f in files:
        print(f"  {f.name}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from membound.cost import Hardware
    from membound.explainer import explain_cli

    hardware = Hardware.named(args.hardware) if args.hardware else None
    path = explain_cli(args.model, args.out, hardware=hardware, batch=args.batch, seq_len=args.seq_len,
                       cache_len=args.cache_len, quantize=args.quantize)
    if path is not None:
        print(f"roofline plot written to {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import membound
    from membound.checkpoint import load_checkpoint
    from membound.cost import Hardware

    device = args.device or _device()
    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model, tokenizer = load_checkpoint(args.model, dtype=dtype, device=device)
    compiled = membound.compile(model, backend=args.backend, quantize=args.quantize)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
    streamer = _TextOut(tokenizer, sys.stdout, token_bar(args.max_new_tokens))
    options = dict(max_new_tokens=args.max_new_tokens, streamer=streamer)
    if args.temperature > 0:
        options.update(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    else:
        options.update(do_sample=False)
    start = time.perf_counter()
    with streamer.bar:
        out = compiled.generate(inputs["input_ids"], attention_mask=inputs.get("attention_mask"), **options)
    seconds = time.perf_counter() - start
    new = out.shape[1] - inputs["input_ids"].shape[1]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    hw = Hardware.detect(device)
    rate = new / seconds if seconds > 0 else 0.0
    share = weights * rate / hw.bandwidth * 100
    print(f"\n\n{new} tokens in {seconds:.2f} s (compile and prefill included): {rate:.1f} tokens/s; "
          f"{weights / 1e6:.1f} MB of weights read per token = {share:.1f}% of {hw.name}'s "
          f"{hw.bandwidth / 1e9:.0f} GB/s", file=sys.stderr)
    return 0


def token_bar(max_new_tokens: int) -> Any:
    """The bar over generated tokens (on stderr): shown where progress is on (stderr a terminal, or
    ``MEMBOUND_PROGRESS=1``) and the text is not streaming to that terminal (stdout redirected): on a
    terminal the streamed text is the progress, and a bar would cut through it."""
    from membound import progress

    if sys.stdout.isatty() and os.environ.get("MEMBOUND_PROGRESS") != "1":
        return progress.silent()
    return progress.bar("membound: generating", total=max_new_tokens, unit="tok")


class _TextOut:
    """A streamer (``put``/``end``) printing decoded text as it comes, without the prompt; each new token
    ticks ``bar``."""

    def __init__(self, tokenizer: object, stream: object, bar: Any = None) -> None:
        from membound import progress

        self.tokenizer = tokenizer
        self.stream = stream
        self.bar = bar if bar is not None else progress.silent()
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first put is the prompt
            self.prompt_seen = True
            return
        self.tokens += [int(t) for t in value.flatten()[:1]]  # row 0
        self.bar.update(1)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)  # type: ignore[attr-defined]
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self.stream.write(text[self.printed:])  # type: ignore[attr-defined]
            self.stream.flush()  # type: ignore[attr-defined]
            self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)  # type: ignore[attr-defined]
        self.stream.write(text[self.printed:])  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]


def cmd_models(args: argparse.Namespace) -> int:
    from membound.models import list_models

    for name in list_models():
        print(name)
    return 0


def cmd_opt(args: argparse.Namespace) -> int:
    """Parse IR text (a dump, or ``-`` for stdin), run the passes named by ``-p``, print the result.

    With ``--split-input-file`` the text is cut at ``// -----`` lines into graphs handled one by one
    (outputs joined by the same line); ``--log`` prints each pass's notes as ``// log:`` comments.
    The cost model passes ask is ``--hardware`` (a spec name, ``detect``, or ``none``).
    """
    from membound.cost import Hardware, RooflineCost
    from membound.ir import parse, print_graph
    from membound.passes import PassContext, PassManager
    from membound.passes.options import parse_pipeline

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        names = parse_pipeline(args.passes)
    except (KeyError, TypeError) as e:  # an unknown pass, an unknown option or a wrong value
        print(f"membound opt: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    hardware = {"none": None, "detect": "detect"}.get(args.hardware, args.hardware)
    chunks = re.split(r"^// -----.*$", text, flags=re.M) if args.split_input_file else [text]
    outputs = []
    for chunk in chunks:
        if not re.search(r"^\s*graph\b", chunk, flags=re.M):
            continue  # only comments (the file's header)
        cost = None if hardware is None else RooflineCost(
            Hardware.detect() if hardware == "detect" else Hardware.named(hardware))
        ctx = PassContext(cost=cost)
        graph = PassManager(names, verify=True).run(parse(chunk), ctx)
        log = "".join(f"// log: {line}\n" for line in ctx.log) if args.log else ""
        outputs.append(log + print_graph(graph, sources=True))
    if not outputs:
        print(f"membound opt: no 'graph @name(...) {{...}}' in {args.file}", file=sys.stderr)
        return 1
    result = "// -----\n".join(outputs)
    if args.output:
        Path(args.output).write_text(result)
    else:
        sys.stdout.write(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from membound import __version__

    p = argparse.ArgumentParser(prog="membound", description="memory-bound-aware compiler for transformer inference")
    p.add_argument("--version", action="version", version=f"membound {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log what membound does (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="compile a built-in Llama, show the pipeline, check against eager")
    d.add_argument("--model", default="llama-tiny")
    d.add_argument("--dump-dir", default="membound-demo-ir")
    d.set_defaults(func=cmd_demo)
    di = sub.add_parser("dump-ir", help="write the IR after every pass for a built-in model")
    di.add_argument("model")
    di.add_argument("--out", default=None, help="folder (default ir-<model>)")
    di.set_defaults(func=cmd_dump_ir)
    e = sub.add_parser("explain", help="roofline tables (and plot) for a built-in model or a checkpoint folder")
    e.add_argument("model", help="a built-in model (membound models) or a folder with config.json")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--seq-len", type=int, default=512, help="prompt length (prefill tables)")
    e.add_argument("--cache-len", type=int, default=None, help="cached tokens at decode (default: --seq-len)")
    e.add_argument("--hardware", default=None, help="predict for this card (h100-sxm, h200, a100-80gb, cpu, ...) "
                   "instead of this machine's")
    e.add_argument("--out", default=".", help="folder for roofline-<model>.png (needs matplotlib)")
    e.add_argument("--quantize", choices=("int8", "int4", "fp8"), default=None,
                   help="show the model with weight-only quantized linears (int4: groups of 128)")
    e.set_defaults(func=cmd_explain)
    g = sub.add_parser("generate", help="generate text from a local Hugging Face checkpoint folder")
    g.add_argument("model", help="a folder with config.json, *.safetensors and tokenizer files")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    g.add_argument("--quantize", choices=("int8", "int4", "fp8"), default=None,
                   help="weight-only quantization of the linears (int4: groups of 128)")
    g.set_defaults(func=cmd_generate)
    m = sub.add_parser("models", help="list the built-in models")
    m.set_defaults(func=cmd_models)
    o = sub.add_parser("opt", help="run passes on IR text (a .mir dump) and print the result")
    o.add_argument("file", help=".mir file, or - for stdin")
    o.add_argument("-p", "--passes", default="", help="comma-separated pass names, run in order; options in braces: "
                   "'constant-fold{max-elements=16}'")
    o.add_argument("--hardware", default="detect", help="cost model spec: a name (h100-sxm, cpu...), detect, none")
    o.add_argument("--split-input-file", action="store_true", help="graphs separated by '// -----' lines")
    o.add_argument("--log", action="store_true", help="print each pass's notes as '// log:' comments")
    o.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    o.set_defaults(func=cmd_opt)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import logging

    from membound import logs
    from membound.checkpoint import ModelNotFound

    args = build_parser().parse_args(argv)
    if args.quiet:
        logs.configure(level=logging.ERROR)
    elif args.verbose:
        logs.configure(level=logging.DEBUG if args.verbose > 1 else logging.INFO)
    try:
        return int(args.func(args))
    except (ModelNotFound, ValueError) as e:
        if not isinstance(e, ModelNotFound) and args.verbose:
            raise
        print(f"membound {args.command}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
