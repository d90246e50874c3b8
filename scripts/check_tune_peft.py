#!/usr/bin/env python3
"""Check that a soft prompt written by `promptd tune` loads in PEFT, and (optionally) that PEFT's
greedy tokens equal promptd's (dev-time; tests never run this).

Loads T5ForConditionalGeneration.from_pretrained(--model), then PeftModel.from_pretrained(model,
--adapter) (a prompt-tuning SEQ_2_SEQ_LM adapter folder: adapter_config.json +
adapter_model.safetensors), and for each line {"input": ...} of --inputs prints one JSON line
{"input", "token_ids"}: greedy tokens (do_sample=False, num_beams=1, use_cache=False), the decoder
start token dropped, cut after the first </s>=1 inclusive (as greedy_peft in make_fixtures.py).
A line's own "max_new_tokens" overrides --max-new-tokens; other keys ("task", "labels") are ignored,
so a `promptd predict` input file works as is.

With --compare FILE.jsonl (JSON lines with "token_ids", e.g. `promptd predict` output, in the
same order as --inputs): prints "N/N match", or a diff of each mismatch on stderr and exits 1.

Usage: python3 scripts/check_tune_peft.py --model DIR --adapter DIR --inputs FILE.jsonl
                                          [--max-new-tokens 16] [--compare FILE.jsonl]
Needs: torch, transformers, peft, tokenizers, safetensors (pip).
"""
import argparse
import json
import os
import sys
import warnings

import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from peft import PeftModel

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

EOS = 1


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# use_cache=False: transformers 5.x sizes its decoder cache by num_layers and fails when
# num_decoder_layers > num_layers; the uncached decode computes the same thing.
def greedy(peft_model, input_ids, max_new_tokens):
    with torch.no_grad():
        out = peft_model.generate(input_ids=torch.tensor([input_ids]),
                                  attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=False)
    ids = out[0].tolist()[1:]  # drop decoder_start_token_id
    if EOS in ids:
        ids = ids[: ids.index(EOS) + 1]
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face T5 folder (config.json, weights, tokenizer.json)")
    ap.add_argument("--adapter", required=True, help="PEFT prompt-tuning adapter folder")
    ap.add_argument("--inputs", required=True, help='JSON lines {"input": ...}')
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--compare", help='JSON lines with "token_ids" to compare against, in input order')
    args = ap.parse_args()
    torch.set_num_threads(1)

    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = T5ForConditionalGeneration.from_pretrained(args.model).eval()
    try:
        peft_model = PeftModel.from_pretrained(model, args.adapter).eval()
    except Exception as e:  # noqa: BLE001 -- the point of this script is to say why it does not load
        sys.exit(f"PEFT could not load {args.adapter}: {type(e).__name__}: {e}")
    cfg = peft_model.peft_config["default"]
    print(f"# adapter: {cfg.peft_type} {cfg.task_type}, {cfg.num_virtual_tokens} virtual tokens, "
          f"token_dim {cfg.token_dim}", file=sys.stderr)

    rows = read_jsonl(args.inputs)
    results = []
    for row in rows:
        ids_in = tok.encode(row["input"]).ids
        got = greedy(peft_model, ids_in, int(row.get("max_new_tokens") or args.max_new_tokens))
        results.append(got)
        print(json.dumps({"input": row["input"], "token_ids": got}), flush=True)

    if args.compare:
        ref = read_jsonl(args.compare)
        if len(ref) != len(rows):
            sys.exit(f"--compare has {len(ref)} lines, --inputs has {len(rows)}")
        bad = 0
        for i, (row, got, other) in enumerate(zip(rows, results, ref)):
            if "input" in other and other["input"] != row["input"]:
                print(f"line {i + 1}: inputs differ: {row['input']!r} vs {other['input']!r}", file=sys.stderr)
                bad += 1
            elif other.get("token_ids") != got:
                print(f"line {i + 1}: {row['input']!r}\n  peft:    {got}\n  compare: {other.get('token_ids')}"
                      + (f"  (error: {other['error']})" if "error" in other else ""), file=sys.stderr)
                bad += 1
        if bad:
            print(f"{len(rows) - bad}/{len(rows)} match", file=sys.stderr)
            sys.exit(1)
        print(f"{len(rows)}/{len(rows)} match", file=sys.stderr)


if __name__ == "__main__":
    main()
