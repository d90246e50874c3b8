#!/usr/bin/env python3
"""The side-by-side benches' batches (scripts/bench-vs-hf.sh): OUT/short.jsonl, OUT/long.jsonl and
OUT/varied.jsonl, 64 rows each of seeded random words, short = 8 words, long = as many words as
make about --long-tokens tokens with the model's tokenizer (so "long" means the same on any
tokenizer), varied = 4 to 32 words each, like `promptd-dev bench`'s requests.
With --tasks N > 0, row i gets "task": taskNNNNN (i mod N); with 0, rows have no task.
  python3 scripts/bench_rows.py --tokenizer MODEL/tokenizer.json --tasks 16 --out DIR
"""
import argparse
import json
import random

from tokenizers import Tokenizer

WORDS = "the quick brown fox jumps over lazy dogs while seven tired cooks argue about soup".split()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--long-tokens", type=int, default=400)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)
    rng = random.Random(0)
    short = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(args.rows)]
    long = []
    for _ in range(args.rows):
        words = []
        while len(tok.encode(" ".join(words), add_special_tokens=False).ids) < args.long_tokens - 1:
            words.append(rng.choice(WORDS))
        long.append(" ".join(words))
    varied = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 32))) for _ in range(args.rows)]
    for name, texts in [("short", short), ("long", long), ("varied", varied)]:
        with open(f"{args.out}/{name}.jsonl", "w") as f:
            for i, text in enumerate(texts):
                row = {"input": text}
                if args.tasks > 0:
                    row = {"task": f"task{i % args.tasks:05d}", **row}
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
