#!/usr/bin/env python3
"""Adapters for the adapter benchmarks (BENCHMARKS.md §16), and PEFT's own mixed-LoRA batch.

  make   PEFT adapters for a bench model, saved by PEFT with seeded random weights, in one
         folder promptd reads as a prompts folder: lora-NN (rank --rank on q and v of every
         attention), ia3-NN (k, v, wo), prefix-NN (--prefix-len positions) and prompt-NN
         (prompt tuning, --prompt-len rows), --tasks of each; and the batches as JSON lines
         {"task", "input"} (rows-<case>.jsonl): prompts, lora (row i has lora-i), lora1 (every
         row lora-00), ia3, prefix and plain (no task).
  peft   times PEFT's mixed-adapter generate() (`adapter_names=`, one LoRA per row) on the lora
         rows: every lora-NN loaded into one PeftModel; prints one JSON line like
         `promptd-dev engine-pass`: {"median_ms", "rows", "tokens"}.

Usage: python3 scripts/bench_adapters.py make --model bench-models/small --out DIR
       python3 scripts/bench_adapters.py peft --model bench-models/small --out DIR --new-tokens 16
Needs: torch, transformers, peft, tokenizers (pip).
"""
import argparse
import json
import os
import random
import statistics
import time
import warnings

import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
WORDS = ("the a of to and in is was for on that with as by at from river city model prompt task tenant "
         "batch token server engine decoder encoder frozen soft vector quick brown fox jumps lazy dog").split()


def make(args):
    os.makedirs(args.out, exist_ok=True)
    seq2seq = TaskType.SEQ_2_SEQ_LM
    kinds = {
        "lora": lambda: LoraConfig(task_type=seq2seq, r=args.rank, lora_alpha=2 * args.rank, target_modules=["q", "v"]),
        "ia3": lambda: IA3Config(task_type=seq2seq, target_modules=["k", "v", "wo"], feedforward_modules=["wo"]),
        "prefix": lambda: PrefixTuningConfig(task_type=seq2seq, num_virtual_tokens=args.prefix_len),
        "prompt": lambda: PromptTuningConfig(task_type=seq2seq, num_virtual_tokens=args.prompt_len),
    }
    gen = torch.Generator().manual_seed(args.seed)
    for kind, config in kinds.items():
        for t in range(args.tasks):
            peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(args.model), config())
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if p.requires_grad:
                        noise = torch.randn(p.shape, generator=gen)
                        p.copy_(1.0 + 0.1 * noise if "ia3_l" in name else 0.05 * noise)
            peft_model.save_pretrained(os.path.join(args.out, f"{kind}-{t:02d}"))
    rng = random.Random(args.seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(args.rows)]
    cases = {
        "plain": lambda i: None,
        "prompts": lambda i: f"prompt-{i % args.tasks:02d}",
        "lora": lambda i: f"lora-{i % args.tasks:02d}",
        "lora1": lambda i: "lora-00",
        "ia3": lambda i: f"ia3-{i % args.tasks:02d}",
        "prefix": lambda i: f"prefix-{i % args.tasks:02d}",
    }
    for case, task in cases.items():
        with open(os.path.join(args.out, f"rows-{case}.jsonl"), "w") as f:
            for i, text in enumerate(texts):
                row = {"input": text}
                if task(i) is not None:
                    row["task"] = task(i)
                f.write(json.dumps(row) + "\n")


def peft(args):
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    rows = [json.loads(l) for l in open(os.path.join(args.out, "rows-lora.jsonl"))]
    names = sorted({r["task"] for r in rows})
    model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(args.model).eval(),
                                      os.path.join(args.out, names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(os.path.join(args.out, name), adapter_name=name)
    model.eval()
    ids = [tok.encode(r["input"]).ids for r in rows]
    width = max(map(len, ids))
    input_ids = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    times, tokens = [], None
    for run in range(args.warmup + args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 do_sample=False, num_beams=1, adapter_names=[r["task"] for r in rows])
        elapsed = (time.perf_counter() - start) * 1e3
        if run >= args.warmup:
            times.append(elapsed)
        if tokens is None:
            tokens = []
            for o in out.tolist():
                o = o[1:]
                tokens.append(o[: o.index(1) + 1] if 1 in o else [t for t in o if t != 0])
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times), "rows": len(rows),
                      "tokens": tokens}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["make", "peft"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--prefix-len", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    make(args) if args.what == "make" else peft(args)


if __name__ == "__main__":
    main()
