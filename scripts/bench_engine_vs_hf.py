#!/usr/bin/env python3
"""transformers on the batch `promptd-dev engine-pass` runs: the same model folder, the same
rows ({"task", "input"} JSON lines), each row's soft prompt prepended to its input embeddings
(as PEFT prompt tuning does), right-padded into one batch, greedy `generate()` with
attn_implementation="sdpa", f32 on CPU with the same thread count. Prints one JSON line
{"median_ms", "min_ms", "rows", "tokens"} like engine-pass, so scripts/bench-vs-hf.sh compares
the two side by side (and checks both chose the same tokens).

--profile adds {"profile": {"encoder_pass": {...}, "decode_step": {...}}}: milliseconds per op
family from torch.profiler (each op's self CPU time, families by op name; see FAMILIES), for
`model.encoder` alone and per step of generate() (generate's total minus the encoder pass).

    pip install torch transformers numpy
    python3 scripts/bench_engine_vs_hf.py --model bench-models/small \
        --prompts bench-models/prompts-512-16 --rows rows.jsonl --new-tokens 1
"""
import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

# Op families as promptd-dev engine-pass --profile names them, by aten op. The elementwise
# muls of the norms and the gate, the residual adds and layout copies (aten::copy_, also
# inside SDPA) are "other" here; promptd counts the norms' and the gate's muls in their
# families and SDPA's copies in attention. generate() computes the cross-attention keys in its
# first step (promptd: in the encoder pass's admission).
FAMILIES = {
    "matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "attention": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_attention_math", "aten::_softmax", "aten::softmax"),
    "position bias + mask": ("aten::arange", "aten::abs", "aten::log", "aten::lt", "aten::gt",
                             "aten::min", "aten::minimum", "aten::full_like", "aten::where", "aten::clamp",
                             "aten::triu", "aten::tril", "aten::masked_fill", "aten::masked_fill_"),
    "layer norm": ("aten::pow", "aten::mean", "aten::rsqrt"),
    "activation": ("aten::gelu", "aten::tanh", "aten::relu"),
    "gather (embeddings)": ("aten::embedding", "aten::index_select"),
    "KV cache (cat/select)": ("aten::cat",),
    "host <-> tensor copies": ("aten::item", "aten::_local_scalar_dense"),
}


def load_prompt(path: pathlib.Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path).astype(np.float32))


def families(prof, per: float) -> dict:
    out = {name: 0.0 for name in FAMILIES}
    out["other"] = 0.0
    total = 0.0
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3
        total += ms
        name = next((f for f, ops in FAMILIES.items() if ev.key in ops), "other")
        out[name] += ms
    out = {k: v / per for k, v in out.items()}
    out["total_ms"] = total / per
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", help="prompt folder (<task>.npy) for rows with a task; rows without one get none")
    ap.add_argument("--rows", required=True)
    ap.add_argument("--new-tokens", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = T5ForConditionalGeneration.from_pretrained(args.model, attn_implementation="sdpa").eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(pathlib.Path(args.model) / "tokenizer.json"))
    rows = [json.loads(l) for l in open(args.rows) if l.strip()]
    prompts = {}
    for r in rows:
        if r.get("task") and r["task"] not in prompts:
            prompts[r["task"]] = load_prompt(pathlib.Path(args.prompts) / f"{r['task']}.npy")
    eos = model.config.eos_token_id
    with torch.no_grad():
        embeds = []
        for r in rows:
            ids = tok(r["input"], add_special_tokens=False)["input_ids"] + [eos]
            e = model.shared(torch.tensor(ids))
            embeds.append(torch.cat([prompts[r["task"]], e], 0) if r.get("task") else e)
        width = max(e.shape[0] for e in embeds)
        d = embeds[0].shape[1]
        batch = torch.zeros(len(rows), width, d)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, e in enumerate(embeds):
            batch[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = 1

        def once():
            return model.generate(
                inputs_embeds=batch,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                num_beams=1,
            )

        times, out = [], None
        for i in range(args.warmup + max(args.repeats, 1)):
            t = time.perf_counter()
            out = once()
            ms = (time.perf_counter() - t) * 1e3
            if i >= args.warmup:
                times.append(ms)
        profile = None
        if args.profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile
            reps = max(args.repeats, 1)
            with torch_profile(activities=[ProfilerActivity.CPU]) as enc:
                for _ in range(reps):
                    model.encoder(inputs_embeds=batch, attention_mask=mask)
            with torch_profile(activities=[ProfilerActivity.CPU]) as gen:
                for _ in range(reps):
                    steps = once().shape[1] - 1
            encoder = families(enc, reps)
            whole = families(gen, reps)
            profile = {
                "encoder_pass": encoder,
                "decode_step": {k: (whole[k] - encoder[k]) / steps for k in whole},
                "decode_steps_per_run": steps,
            }
    tokens = []
    for row in out.tolist():
        row = row[1:]  # the decoder start token
        cut = []
        for t in row:
            cut.append(t)
            if t == eos:
                break
        tokens.append(cut)
    result = {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "rows": len(rows),
        "tokens": tokens,
    }
    if profile:
        result["profile"] = profile
    print(json.dumps(result))


if __name__ == "__main__":
    main()
