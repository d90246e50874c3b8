#!/usr/bin/env python3
"""The hand-built PyTorch baseline of issue 14's HTTP comparison: what a team gets by batching
mixed tasks themselves with transformers, no PEFT and no server. Each window of
--tasks x --per-task requests (16 x 4 = 64) becomes ONE batch: every row is [its task's prompt
rows; its input's token embeddings], right-padded with an attention mask, and one greedy
`generate(inputs_embeds=...)` (attn_implementation="sdpa", f32 on CPU) answers all of them.

The requests come from a port of `promptd-dev bench`'s generator (src/bin/promptd-dev/bench.rs:
its xorshift, uniform task draws, 4..32 of its words), so with the same --seed the rows equal
those of `promptd-dev bench --offline --batch-size 64`. Prompts are prepended as in
scripts/bench_engine_vs_hf.py; inputs are tokenized as promptd does (no special tokens, then </s>).

  --mode mixed          the measurement above; prints one JSON line with rows_per_s
  --mode peft-per-task  hands over to scripts/bench_hf_peft.py --modes per-task (the PEFT column)
  --check               batched vs alone: the first --check-rows rows of a full window, generated
                        in the window and each on its own, must choose the same tokens

    python3 scripts/bench_torch_mixed.py --model bench-models/small \
        --prompts bench-models/prompts-512-16 --seconds 20 --threads 2
Needs: torch, transformers, tokenizers, numpy (and peft, which bench_hf_peft.py imports).
"""
import argparse
import json
import os
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine_vs_hf import load_prompt  # noqa: E402
from bench_hf_peft import WORDS  # noqa: E402  (also quiets transformers' logging)

MASK64 = (1 << 64) - 1


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="folder of taskNNNNN.npy prompts [length, d_model]")
    p.add_argument("--mode", choices=["mixed", "peft-per-task"], default="mixed")
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--first-task", type=int, default=0)
    p.add_argument("--per-task", type=int, default=4, help="window = tasks x per-task requests")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--min-words", type=int, default=4)
    p.add_argument("--max-words", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--check", action="store_true", help="compare batched and alone, then exit")
    p.add_argument("--check-rows", type=int, default=4)
    return p.parse_args()


class Rng:
    """promptd-dev bench's xorshift64*, bit for bit."""

    def __init__(self, seed):
        self.x = ((seed * 0x9E3779B97F4A7C15) & MASK64) | 1

    def next_u64(self):
        x = self.x
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.x = x
        return (x * 0x2545F4914F6CDD1D) & MASK64

    def unit(self):
        return ((self.next_u64() >> 11) + 1) / float(1 << 53)

    def below(self, n):
        return int(min(self.unit() * n, n - 1.0))


def requests(args):
    """(task name, text) forever, in the order `promptd-dev bench --offline` draws them."""
    rng = Rng(args.seed)
    while True:
        task = f"task{args.first_task + rng.below(args.tasks):05d}"
        n = args.min_words + rng.below(args.max_words - args.min_words + 1)
        yield task, " ".join(WORDS[rng.below(len(WORDS))] for _ in range(n))


class MixedBatch:
    """Builds one padded inputs_embeds batch from rows of any tasks."""

    def __init__(self, model, args):
        self.model = model
        self.tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        self.eos = model.config.eos_token_id
        self.prompts = {}
        for i in range(args.first_task, args.first_task + args.tasks):
            name = f"task{i:05d}"
            self.prompts[name] = load_prompt(os.path.join(args.prompts, f"{name}.npy"))

    def __call__(self, rows):
        embed = self.model.get_input_embeddings()
        seqs = []
        for task, text in rows:
            ids = self.tok.encode(text, add_special_tokens=False).ids + [self.eos]
            seqs.append(torch.cat([self.prompts[task], embed(torch.tensor(ids))], 0))
        width = max(s.shape[0] for s in seqs)
        batch = torch.zeros(len(seqs), width, seqs[0].shape[1])
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            batch[r, : s.shape[0]] = s
            mask[r, : s.shape[0]] = 1
        return batch, mask


def generate(model, args, batch, mask):
    return model.generate(inputs_embeds=batch, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                          do_sample=False, num_beams=1)


def cut(out, eos):
    """Each row's generated tokens: the decoder start token dropped, up to and with </s>."""
    rows = []
    for row in out.tolist():
        row = row[1:]
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def check(model, build, args):
    gen = requests(args)
    window = [next(gen) for _ in range(args.tasks * args.per_task)]
    k = min(args.check_rows, len(window))
    batched = cut(generate(model, args, *build(window)), build.eos)[:k]
    alone = [cut(generate(model, args, *build([row])), build.eos)[0] for row in window[:k]]
    same = sum(a == b for a, b in zip(batched, alone))
    print(json.dumps({"check": "same" if same == k else "differ", "rows": k, "same_rows": same,
                      "window": len(window), "tasks": [t for t, _ in window[:k]],
                      "words": [len(x.split()) for _, x in window[:k]],
                      "batched": batched, "alone": alone}), flush=True)
    return same == k


def run(model, build, args):
    gen = requests(args)
    size = args.tasks * args.per_task
    rows = tokens = windows = task_sum = 0
    start = time.perf_counter()
    warm_until = start + args.warmup
    end = warm_until + args.seconds
    measured_from = None
    while time.perf_counter() < end:
        window = [next(gen) for _ in range(size)]
        now = time.perf_counter()
        measured = now >= warm_until
        if measured and measured_from is None:
            measured_from = now
        out = generate(model, args, *build(window))
        if measured:
            rows += len(window)
            tokens += sum(len(r) for r in cut(out, build.eos))
            windows += 1
            task_sum += len({t for t, _ in window})
    secs = time.perf_counter() - measured_from
    return {"impl": "torch-mixed", "mode": "mixed", "tasks": args.tasks, "window": size,
            "threads": torch.get_num_threads(), "seconds": round(secs, 2), "windows": windows,
            "mean_tasks_per_window": round(task_sum / max(windows, 1), 2),
            "rows_per_s": round(rows / secs, 2), "generated_tokens_per_s": round(tokens / secs, 1)}


def peft_per_task(args):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_hf_peft.py")
    argv = [sys.executable, script, "--model", args.model, "--prompts", args.prompts,
            "--tasks", str(args.tasks), "--modes", "per-task", "--window", str(args.tasks * args.per_task),
            "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--max-new-tokens", str(args.max_new_tokens), "--min-words", str(args.min_words),
            "--max-words", str(args.max_words), "--threads", str(args.threads), "--seed", str(args.seed)]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def main():
    args = parse()
    if args.mode == "peft-per-task":
        peft_per_task(args)
    torch.set_num_threads(args.threads)
    import transformers
    print(json.dumps({"versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                      "threads": torch.get_num_threads()}), flush=True)
    model = T5ForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32,
                                                       attn_implementation="sdpa").eval()
    build = MixedBatch(model, args)
    with torch.no_grad():
        if args.check:
            sys.exit(0 if check(model, build, args) else 1)
        print(json.dumps(run(model, build, args)), flush=True)


if __name__ == "__main__":
    main()
