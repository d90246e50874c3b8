"""Fusing a layer's projections into one packed oneDNN weight (BENCHMARKS.md §18, "Where the
f32 time goes now"): the decoder's self-attention q, k, v (3 x 512 x 512) and gated
feed-forward inputs wi_0, wi_1 (2 x 1024 x 512) of 6 layers, multiplied one by one or as one
concatenated weight each, through `mkldnn::_linear_pointwise` over weights reordered once (what
`--cpu-matmul onednn-packed` runs). Other weights are read between timed calls so none starts in
cache. Prints milliseconds for the 6 layers (median of --repeats) and whether the fused output
equals the separate ones bit for bit.

    python3 scripts/bench_fused_projections.py [--threads 2] [--repeats 30]
"""
import argparse
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    layers = 6
    pack = lambda w: torch.ops.mkldnn._reorder_linear_weight(w, None)
    linear = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    qkv = [[torch.randn(512, 512, generator=g) for _ in range(3)] for _ in range(layers)]
    wi = [[torch.randn(1024, 512, generator=g) for _ in range(2)] for _ in range(layers)]
    groups = {
        "q,k,v": ([[pack(w) for w in ws] for ws in qkv], [pack(torch.cat(ws)) for ws in qkv]),
        "wi_0,wi_1": ([[pack(w) for w in ws] for ws in wi], [pack(torch.cat(ws)) for ws in wi]),
    }
    flush = [pack(torch.randn(512, 512, generator=g)) for _ in range(60)]
    print(f"# torch {torch.__version__}, {args.threads} threads, {layers} layers")
    print("| rows | projections | separate ms | fused ms | equal |")
    print("|---:|---|---:|---:|---|")
    for m in (1, 8, 64):
        x = torch.randn(m, 512, generator=g)

        def timed(f):
            f()
            times = []
            for _ in range(args.repeats):
                for w in flush:
                    linear(x, w)
                t = time.perf_counter()
                f()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)

        for name, (separate, fused) in groups.items():
            a = timed(lambda: [[linear(x, w) for w in ws] for ws in separate])
            b = timed(lambda: [linear(x, w) for w in fused])
            equal = all(
                torch.equal(torch.cat([linear(x, w) for w in ws], 1), linear(x, f))
                for ws, f in zip(separate, fused)
            )
            print(f"| {m} | {name} | {a:.2f} | {b:.2f} | {equal} |")


if __name__ == "__main__":
    main()
