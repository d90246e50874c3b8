#!/usr/bin/env python3
"""End-to-end parity check on a fresh random checkpoint (not the committed fixtures).

Builds a random tiny T5 of the given family with transformers' own save_pretrained, PEFT
prompt-tuning adapters of lengths 1..100 saved by PEFT, runs `promptd predict` over inputs
of 20+ tasks in mixed batches, and compares greedy tokens with PEFT's generate().

Usage: python3 scripts/check_parity.py --bin target/release/promptd [--family v1_1] [--seed 1]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import warnings

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--family", choices=["v1_0", "v1_1"], default="v1_1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--tokenizer", choices=["spm", "unigram"], default="spm")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    work = tempfile.mkdtemp(prefix="promptd-parity-")
    tok = (mf.build_spm_tokenizer if args.tokenizer == "spm" else mf.build_tokenizer)(work, rng)
    heads = rng.choice([2, 4, 6])
    kwargs = dict(
        vocab_size=tok.get_vocab_size() + rng.randint(0, 40), d_model=rng.choice([24, 32, 64]), d_kv=rng.choice([4, 8, 16]),
        d_ff=rng.choice([32, 96]), num_layers=rng.randint(1, 4), num_decoder_layers=rng.randint(1, 4), num_heads=heads,
        relative_attention_num_buckets=rng.choice([8, 16, 32]), relative_attention_max_distance=rng.choice([20, 64, 128]),
        feed_forward_proj="relu" if args.family == "v1_0" else "gated-gelu", dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    if args.family == "v1_1":
        kwargs["tie_word_embeddings"] = False
    cfg = T5Config(**kwargs)
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "SelfAttention.q" in name or "SelfAttention.k" in name or "EncDecAttention" in name:
                p.mul_(3.0)
            if "relative_attention_bias" in name:
                p.normal_(0, 2.0)
    mdir = os.path.join(work, "model")
    model.save_pretrained(mdir)
    os.rename(os.path.join(work, "tokenizer.json"), os.path.join(mdir, "tokenizer.json"))
    model = T5ForConditionalGeneration.from_pretrained(mdir).eval()
    pdir = os.path.join(work, "prompts")
    lengths = [1, 100] + [rng.randint(1, 100) for _ in range(args.tasks - 2)]
    for i, p in enumerate(lengths):
        peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=p))
        peft_model.save_pretrained(os.path.join(pdir, f"t{i}"))
        model = peft_model.base_model
    lines, expected = [], []
    for c in range(3 * args.tasks):
        task = f"t{c % args.tasks}"
        text = mf.sentence(rng, rng.randint(100, 200) if c % 4 == 0 else rng.randint(1, 30))
        max_new = rng.choice([1, 5, 12])
        ids = tok.encode(text).ids
        peft_model = PeftModel.from_pretrained(model, os.path.join(pdir, task)).eval()
        with torch.no_grad():
            out = peft_model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=max_new, do_sample=False, num_beams=1, use_cache=False)
        model = peft_model.base_model
        got = out[0].tolist()[1:]
        if 1 in got:
            got = got[: got.index(1) + 1]
        lines.append(json.dumps({"task": task, "input": text, "max_new_tokens": max_new}))
        expected.append(got)
    res = subprocess.run([args.bin, "predict", "--model", mdir, "--prompts", pdir, "--max-batch-size", "32"],
                         input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    outs = [json.loads(l) for l in res.stdout.splitlines()]
    bad = sum(1 for o, e in zip(outs, expected) if o.get("token_ids") != e)
    print(f"{args.family} seed {args.seed}: config {kwargs}\n{len(expected)} inputs, {bad} mismatches")
    for o, e in zip(outs, expected):
        if o.get("token_ids") != e:
            print("  want", e, "got", o)
    sys.exit(1 if bad or len(outs) != len(expected) else 0)


if __name__ == "__main__":
    main()
