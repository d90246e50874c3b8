#!/usr/bin/env python3
"""Baseline for `promptd tune`: the same prompt-tuning training step in PyTorch + transformers
(optionally PEFT), timed on the same machine, to compare steps/s side by side.

One step: forward the frozen T5 (train mode, dropout on) with a learned prompt P prepended to
the input embeddings, cross-entropy on the labels, backward into P only, Adafactor step (the
T5 prompt-tuning settings promptd uses). 2 warm-up steps, then --steps timed steps.
  manual  P is a plain (prompt_length, d_model) tensor concatenated before embed(input_ids)
  peft    get_peft_model(PromptTuningConfig(SEQ_2_SEQ_LM, num_virtual_tokens=prompt_length))
Batches: all rows every step if --batch-size >= rows, else consecutive chunks cycling in file
order. tokens_per_s counts unpadded input + label tokens (not prompt rows), like promptd.

Usage:
  python3 scripts/bench_tune_torch.py --model bench-models/small --train train.jsonl \
      --prompt-length 100 --batch-size 8 --steps 20 --threads 2 [--impl manual|peft] [--dropout 0]
Needs: torch, transformers, peft, tokenizers (pip). Prints one JSON line.
"""
import argparse
import json
import os
import resource
import time
import warnings

import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration
from transformers.optimization import Adafactor
from transformers.utils import logging as hf_logging

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def pad(seqs, value):
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def make_batches(path, tok, batch_size):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.append((tok.encode(r["input"]).ids, tok.encode(r["target"]).ids))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    if batch_size >= len(rows):
        chunks = [rows]
    else:
        n = len(rows)
        chunks, i = [], 0
        while True:  # consecutive chunks, wrapping around, until the cycle repeats
            chunks.append([rows[(i + k) % n] for k in range(batch_size)])
            i = (i + batch_size) % n
            if i == 0:
                break
    batches = []
    for c in chunks:
        ins, labs = [r[0] for r in c], [r[1] for r in c]
        ids = pad(ins, 0)
        mask = pad([[1] * len(s) for s in ins], 0)
        labels = pad(labs, -100)
        ntok = sum(len(s) for s in ins) + sum(len(s) for s in labs)
        batches.append((ids, mask, labels, ntok))
    return batches


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--prompt-length", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impl", choices=["manual", "peft"], default="manual")
    ap.add_argument("--dropout", type=float, default=None, help="override every dropout p")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    batches = make_batches(a.train, tok, a.batch_size)

    model = T5ForConditionalGeneration.from_pretrained(a.model)
    model.requires_grad_(False)
    if a.dropout is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = a.dropout

    if a.impl == "manual":
        P = (torch.randn(a.prompt_length, model.config.d_model) * 0.5).requires_grad_(True)
        params, embed = [P], model.get_input_embeddings()

        def loss_fn(ids, mask, labels):
            b = ids.shape[0]
            x = torch.cat([P.unsqueeze(0).expand(b, -1, -1), embed(ids)], dim=1)
            m = torch.cat([torch.ones(b, a.prompt_length, dtype=mask.dtype), mask], dim=1)
            return model(inputs_embeds=x, attention_mask=m, labels=labels).loss
    else:
        from peft import PromptTuningConfig, TaskType, get_peft_model
        model = get_peft_model(model, PromptTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=a.prompt_length))
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn(ids, mask, labels):
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    model.train()

    opt = Adafactor(params, lr=0.3, scale_parameter=False, relative_step=False,
                    warmup_init=False, decay_rate=-0.8, weight_decay=1e-5,
                    clip_threshold=1.0, beta1=None)

    def step(i):
        ids, mask, labels, ntok = batches[i % len(batches)]
        loss_fn(ids, mask, labels).backward()
        opt.step()
        opt.zero_grad()
        return ntok

    for i in range(2):
        step(i)
    tokens, t0 = 0, time.perf_counter()
    for i in range(2, 2 + a.steps):
        tokens += step(i)
    dt = time.perf_counter() - t0

    print(json.dumps({
        "impl": "transformers" if a.impl == "manual" else "peft",
        "model": os.path.basename(os.path.normpath(a.model)),
        "batch_size": a.batch_size, "prompt_length": a.prompt_length, "steps": a.steps,
        "steps_per_s": round(a.steps / dt, 3), "s_per_step": round(dt / a.steps, 5),
        "tokens_per_s": round(tokens / dt, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
