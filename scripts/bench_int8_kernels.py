"""Which int8 kernel libtorch offers for `--dtype int8` is fastest on THIS CPU (issue 29: per-output-
channel int8 weights, activations quantized dynamically), against the two f32 kernels promptd
chooses between today. On t5-small's linear shapes at 1, 8, 64 and 1024 rows (a decode step of
1 / 8 / 64 rows, and an encoder pass), with the threads promptd uses. Per shape: the median of
15 timed calls after 3 warm-ups; rounds alternate the kernels. Also each int8 path's largest
relative error against f32 on random activations and weights of T5's scale.

    python3 scripts/bench_int8_kernels.py [--threads 2] [--rounds 2]

Kernels:
  f32-blas       torch.nn.functional.linear (MKL in the PyPI wheels)
  f32-onednn     mkldnn_linear, as promptd's serving passes (input wrapped, output read back dense)
  int8-fbgemm    quantize_dynamic, per-channel qint8 weights, quantized engine fbgemm
  int8-onednn    the same with quantized engine onednn
  int8-int-mm    torch._int_mm (int8 x int8 -> int32) with per-row activation and per-channel
                 weight scales, dequantized by hand: the path a libtorch caller builds itself
"""
import argparse
import warnings
import platform
import statistics

import torch

from bench_gemm_kernels import median_ms  # the same timing: 3 warm-ups, median of 15

SHAPES = [(rows, i, o) for rows in (1, 8, 64, 1024) for (i, o) in ((512, 512), (512, 2048), (2048, 512))]


def cpu_model():
    """The CPU's name and the flags that decide these kernels (the machines differ by session)."""
    name, flags = platform.processor(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16"]
    return f"{name} ({' '.join(f for f in wanted if f in flags) or 'no avx2'})"


def dynamic_linear(weight, engine):
    torch.backends.quantized.engine = engine
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight.data.copy_(weight)
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    model = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(lin), {torch.nn.Linear: qconfig}, dtype=torch.qint8
    )
    return model


def int_mm_linear(weight):
    # Per-output-channel symmetric int8 weights, [in, out] for _int_mm.
    w_scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    w_q = torch.round(weight / w_scale[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous()

    def f(x):
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
        x_q = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8)
        if x_q.shape[0] <= 16:  # _int_mm wants at least 17 rows on some builds
            pad = torch.zeros(17 - x_q.shape[0], x_q.shape[1], dtype=torch.int8)
            acc = torch._int_mm(torch.cat([x_q, pad]), w_q)[: x_q.shape[0]]
        else:
            acc = torch._int_mm(x_q, w_q)
        return acc.to(torch.float32) * x_scale * w_scale[None, :]

    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    engines = torch.backends.quantized.supported_engines
    print(f"# cpu: {cpu_model()}; torch {torch.__version__}; threads {args.threads}; "
          f"quantized engines {engines}; mkldnn {torch.backends.mkldnn.is_available()}")
    kernels = ["f32-blas", "f32-onednn", "int8-fbgemm", "int8-onednn", "int8-int-mm"]
    print("rows x in -> out | " + " | ".join(f"{k} ms" for k in kernels) + " | best int8 / best f32 | int8 max rel err (fbgemm, onednn, int-mm)")
    with torch.no_grad():
        for rows, i, o in SHAPES:
            x = torch.randn(rows, i)
            w = torch.randn(o, i) * 0.05
            paths = {
                "f32-blas": lambda: torch.nn.functional.linear(x, w),
                "f32-onednn": lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w).to_dense(),
            }
            errs = []
            ref = torch.nn.functional.linear(x, w)
            for engine, name in (("fbgemm", "int8-fbgemm"), ("onednn", "int8-onednn")):
                if engine not in engines:
                    continue
                model = dynamic_linear(w, engine)
                paths[name] = (lambda m, e: (lambda: (setattr(torch.backends.quantized, "engine", e), m(x))[1]))(model, engine)
                errs.append(float(((paths[name]() - ref).abs().max() / ref.abs().max())))
            try:
                mm = int_mm_linear(w)
                mm(x)
                paths["int8-int-mm"] = lambda: mm(x)
                errs.append(float(((mm(x) - ref).abs().max() / ref.abs().max())))
            except RuntimeError as e:
                print(f"# _int_mm unavailable at {rows}x{i}: {str(e).splitlines()[0]}")
            times = {k: [] for k in paths}
            for _ in range(args.rounds):
                for k, f in paths.items():
                    times[k].append(median_ms(f))
            ms = {k: statistics.median(v) for k, v in times.items()}
            best_f32 = min(ms[k] for k in ms if k.startswith("f32"))
            int8 = [ms[k] for k in ms if k.startswith("int8")]
            ratio = (min(int8) / best_f32) if int8 else float("nan")
            cells = " | ".join(f"{ms[k]:.3f}" if k in ms else "-" for k in kernels)
            print(f"{rows} x {i} -> {o} | {cells} | {ratio:.2f} | " + ", ".join(f"{e:.3g}" for e in errs))


if __name__ == "__main__":
    main()
