"""One decode step's weight reads on the bench model's shape (BENCHMARKS.md §18, "oneDNN over
packed weights"; `promptd-dev make-model --shape small`: d_model 512, d_ff 1024 gated): every
linear layer a decoder step multiplies by (6 layers of self q, k, v, o, cross q, o, wi_0, wi_1,
wo; the 32128 x 512 LM head; 141 MB of distinct f32 weights, so none stays in cache), at 1 to
256 rows, by each CPU f32 kernel libtorch has:
  mkl-linear      torch.nn.functional.linear (MKL in the PyPI wheels)
  mkl-transposed  x @ W.T stored transposed ([in, out] contiguous: MKL's other gemv)
  onednn          mkldnn_linear on the plain weight (reordered at every call)
  onednn-packed   mkldnn::_linear_pointwise over the weight reordered once
                  (mkldnn::_reorder_linear_weight), what `--cpu-matmul onednn-packed` runs
Milliseconds per step, the median of --repeats, kernels alternating.

    python3 scripts/bench_decode_weights.py [--threads 2] [--repeats 5]
"""
import argparse
import statistics
import time

import torch

# (out, in, count) of one decode step: 36 projections, 12 gated inputs, 6 outputs, the head.
SHAPES = [(512, 512, 36), (1024, 512, 12), (512, 1024, 6), (32128, 512, 1)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", default="1,2,4,8,16,32,64,256")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=g) for o, i, c in SHAPES for _ in range(c)]
    transposed = [w.t().contiguous() for w in weights]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    mb = sum(w.numel() for w in weights) * 4 / 1e6
    print(f"# {len(weights)} weights, {mb:.0f} MB; {args.threads} threads; torch {torch.__version__}")
    print("| rows | mkl-linear | mkl-transposed | onednn | onednn-packed | packed / onednn |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in (int(r) for r in args.rows.split(",")):
        xs = {n: torch.randn(m, n, generator=g) for n in (512, 1024)}
        kernels = {
            "mkl-linear": lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights],
            "mkl-transposed": lambda: [xs[t.shape[0]] @ t for t in transposed],
            "onednn": lambda: [
                torch.ops.aten.mkldnn_linear(xs[w.shape[1]].to_mkldnn(), w).to_dense() for w in weights
            ],
            "onednn-packed": lambda: [
                torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], q, None, "none", [], "")
                for w, q in zip(weights, packed)
            ],
        }
        times = {k: [] for k in kernels}
        for f in kernels.values():
            f()
        for _ in range(args.repeats):
            for name, f in kernels.items():
                t = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t) * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        cells = " | ".join(f"{ms[k]:.2f}" for k in kernels)
        print(f"| {m} | {cells} | {ms['onednn-packed'] / ms['onednn']:.2f} |")


if __name__ == "__main__":
    main()
