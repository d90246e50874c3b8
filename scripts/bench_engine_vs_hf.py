#!/usr/bin/env python3
"""transformers on the batch `promptd-dev engine-pass` runs: the same model folder, the same
rows ({"task", "input"} JSON lines), each row's soft prompt prepended to its input embeddings
(as PEFT prompt tuning does), right-padded into one batch, greedy `generate()` with
attn_implementation="sdpa", f32 on CPU with the same thread count. Prints one JSON line
{"median_ms", "min_ms", "rows", "tokens"} like engine-pass, so scripts/bench-vs-hf.sh compares
the two side by side (and checks both chose the same tokens).

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


def load_prompt(path: pathlib.Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path).astype(np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--new-tokens", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = T5ForConditionalGeneration.from_pretrained(args.model, attn_implementation="sdpa").eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(pathlib.Path(args.model) / "tokenizer.json"))
    rows = [json.loads(l) for l in open(args.rows) if l.strip()]
    prompts = {}
    for r in rows:
        if r["task"] not in prompts:
            prompts[r["task"]] = load_prompt(pathlib.Path(args.prompts) / f"{r['task']}.npy")
    eos = model.config.eos_token_id
    with torch.no_grad():
        embeds = []
        for r in rows:
            ids = tok(r["input"], add_special_tokens=False)["input_ids"] + [eos]
            e = model.shared(torch.tensor(ids))
            embeds.append(torch.cat([prompts[r["task"]], e], 0))
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
    tokens = []
    for row in out.tolist():
        row = row[1:]  # the decoder start token
        cut = []
        for t in row:
            cut.append(t)
            if t == eos:
                break
        tokens.append(cut)
    print(json.dumps({
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "rows": len(rows),
        "tokens": tokens,
    }))


if __name__ == "__main__":
    main()
