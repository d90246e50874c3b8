#!/usr/bin/env python3
"""Baseline for BENCHMARKS.md: the same model and prompts served the way a team would with
Hugging Face transformers + PEFT today, one prompt-tuning adapter per task.

PEFT keeps one active adapter at a time for prompt tuning, so a batch can only hold rows of one
task. Two ways to serve a stream of requests over T tasks are measured:
  batch1     each request alone: set_adapter(task), generate()
  per-task   a window of --window requests in arrival order, grouped by task, one generate()
             per group (the best PEFT allows: same-task rows batched)
The script also tries PEFT's mixed-adapter batch (`adapter_names=`) and prints what PEFT says.

Usage (after `promptd-dev make-model` / `make-prompts`, or scripts/bench-batching.sh, made them):
  python3 scripts/bench_hf_peft.py --model bench-models/small --prompts bench-models/prompts-512-1000 \
      --tasks 1 8 64 --seconds 20 --threads 2
Needs: torch, transformers, peft, tokenizers, numpy (pip). Prints one JSON line per measurement.
"""
import argparse
import json
import os
import random
import time
import warnings

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from peft import PromptTuningConfig, TaskType, get_peft_model

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()

# The load generator's words (src/bin/promptd-dev/bench.rs), so inputs have the same lengths in tokens.
WORDS = ("review the battery lasts all day screen cracked after a week great value would buy "
         "again").split()


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="folder of taskNNNNN.npy prompts [length, d_model]")
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--window", type=int, default=32, help="requests grouped per round (per-task mode)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--min-words", type=int, default=4)
    p.add_argument("--max-words", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--modes", nargs="+", default=["batch1", "per-task"])
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def load_prompt(folder, i):
    return np.load(os.path.join(folder, f"task{i:05d}.npy"))


def build(args, n_tasks):
    base = T5ForConditionalGeneration.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    length = load_prompt(args.prompts, 0).shape[0]
    cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=length)
    model = get_peft_model(base, cfg, adapter_name="task00000")
    for i in range(1, n_tasks):
        model.add_adapter(f"task{i:05d}", cfg)
    with torch.no_grad():
        for i in range(n_tasks):
            rows = torch.from_numpy(load_prompt(args.prompts, i))
            weight = model.prompt_encoder[f"task{i:05d}"].embedding.weight
            # Seq2seq adapters hold [encoder rows; decoder rows]; generate() uses the encoder rows.
            weight.copy_(rows.repeat(weight.shape[0] // rows.shape[0], 1))
    model.eval()
    return model


class Inputs:
    def __init__(self, args):
        self.tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        self.args = args
        self.rng = random.Random(args.seed)

    def text(self):
        n = self.rng.randint(self.args.min_words, self.args.max_words)
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def batch(self, texts):
        ids = []
        for t in texts:
            e = self.tok.encode(t).ids
            if not e or e[-1] != 1:
                e = e + [1]
            ids.append(e)
        width = max(len(e) for e in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, e in enumerate(ids):
            input_ids[r, : len(e)] = torch.tensor(e)
            mask[r, : len(e)] = 1
        return input_ids, mask


def generate(model, args, input_ids, mask, **extra):
    return model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                          do_sample=False, num_beams=1, **extra)


def run(model, inputs, args, n_tasks, mode):
    rng = random.Random(args.seed + n_tasks)
    rows = tokens = 0
    start = time.perf_counter()
    warm_until = start + args.warmup
    end = warm_until + args.seconds
    measured_from = None
    while time.perf_counter() < end:
        window = 1 if mode == "batch1" else args.window
        requests = [(rng.randrange(n_tasks), inputs.text()) for _ in range(window)]
        groups = {}
        for task, text in requests:
            groups.setdefault(task, []).append(text)
        now = time.perf_counter()
        measured = now >= warm_until
        if measured and measured_from is None:
            measured_from = now
        done = 0
        for task, texts in groups.items():
            model.set_adapter(f"task{task:05d}")
            input_ids, mask = inputs.batch(texts)
            with torch.no_grad():
                out = generate(model, args, input_ids, mask)
            done += len(texts)
            tokens += int((out[:, 1:] != 0).sum()) if measured else 0
        if measured:
            rows += done
    secs = time.perf_counter() - measured_from
    return {"impl": "hf-peft", "mode": mode, "tasks": n_tasks, "threads": args.threads,
            "seconds": round(secs, 2), "rows_per_s": round(rows / secs, 2),
            "generated_tokens_per_s": round(tokens / secs, 1)}


def try_mixed(model, inputs, args):
    input_ids, mask = inputs.batch([inputs.text(), inputs.text()])
    try:
        with torch.no_grad():
            generate(model, args, input_ids, mask, adapter_names=["task00000", "task00001"])
        return "accepted"
    except Exception as e:  # noqa: BLE001 — we report whatever PEFT says
        return f"{type(e).__name__}: {e}"


def main():
    args = parse()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    import peft
    import transformers
    print(json.dumps({"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                   "peft": peft.__version__}, "threads": torch.get_num_threads()}), flush=True)
    inputs = Inputs(args)
    for n_tasks in args.tasks:
        model = build(args, max(n_tasks, 2))
        if n_tasks == args.tasks[0]:
            print(json.dumps({"mixed_adapter_batch": try_mixed(model, inputs, args)}), flush=True)
        for mode in args.modes:
            print(json.dumps(run(model, inputs, args, n_tasks, mode)), flush=True)


if __name__ == "__main__":
    main()
