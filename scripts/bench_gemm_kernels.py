"""libtorch's two CPU f32 matmul kernels on the shapes of a t5-small pass (BENCHMARKS.md §11,
"oneDNN"): torch.nn.functional.linear (the BLAS: MKL in the PyPI wheels) against
mkldnn_linear (oneDNN, what promptd's serving passes use; the input wrapped and the output read
back dense, as promptd does). Each shape's median of 15 timed runs after 3 warm-ups, rounds
alternating the kernels.

    python3 scripts/bench_gemm_kernels.py [--threads 2] [--rounds 3]
"""
import argparse
import statistics
import time

import torch

SHAPES = [  # rows x in -> out: projections, the feed-forward, a fused one, the LM head, a step
    (3648, 512, 512),
    (3648, 512, 1024),
    (3648, 1024, 512),
    (3648, 512, 1536),
    (64, 512, 32128),
    (64, 512, 512),
    (4096, 4096, 4096),
]


def median_ms(f, n=15):
    for _ in range(3):
        f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    F = torch.nn.functional
    print("| round | rows x in -> out | BLAS ms | BLAS GFLOP/s | oneDNN ms | oneDNN GFLOP/s | oneDNN / BLAS rate |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in range(args.rounds):
        for n, k, m in SHAPES:
            x, w = torch.randn(n, k), torch.randn(m, k)
            blas = median_ms(lambda: F.linear(x, w))
            onednn = median_ms(lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w).to_dense())
            flop = 2 * n * k * m
            print(f"| {r + 1} | {n} x {k} -> {m} | {blas:.2f} | {flop / blas / 1e6:.0f} | "
                  f"{onednn:.2f} | {flop / onednn / 1e6:.0f} | {blas / onednn:.2f} |", flush=True)


if __name__ == "__main__":
    main()
