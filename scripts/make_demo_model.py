#!/usr/bin/env python3
"""Build the demo model: a tiny T5 v1.1 trained from scratch, multi-task, on synthetic reviews.

Run by `make demo-model`; seeded and reproducible on one machine (same torch, same threads).

  1. Data (scripts/demo_data.py): one pool of reviews split into train / dev / test, and for every
     task (sentiment, aspects, rating, name, translate, and the never-pretrained verdict and dish)
     JSON lines {"input", "target"} with NO task prefix: <data>/<task>.{train,dev,test}.jsonl.
     The tasks share the same inputs; only the prompt can say which answer is wanted.
  2. Tokenizer: a Unigram model whose pieces are the demo's words plus single characters
     (lowercasing, Metaspace, `$A </s>`, <pad>=0 </s>=1 <unk>=2, <extra_id_N> sentinels).
  3. Pretraining, the way T5 was trained: a mixture of span corruption over review text and the
     five pretraining tasks, each input behind its plain-text prefix ("sentiment: ...").
     Reviews in dev / test are never pretrained on.
  4. The model folder (config.json, generation_config.json, model.safetensors in float16 to keep the
     committed file small, tokenizer.json), loadable by transformers and by promptd, and each
     pretraining task's dev accuracy with its text prefix, as transformers reads the saved folder.

Usage: python3 scripts/make_demo_model.py [--model DIR] [--data DIR] [--steps N]
Needs: torch, transformers, tokenizers, safetensors (pip). Same torch, machine and threads: same bytes.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_data as D  # noqa: E402

warnings.filterwarnings("ignore")

SPLITS = {"train": 1000, "dev": 300, "test": 500}


def make_splits(seed):
    """Disjoint review pools (by text) for train / dev / test."""
    rng = random.Random(seed)
    seen, splits = set(), {}
    for split, n in SPLITS.items():
        rows = []
        while len(rows) < n:
            r = D.Review(rng)
            if r.text() in seen:
                continue
            seen.add(r.text())
            rows.append(r)
        splits[split] = rows
    return splits


def write_data(splits, out):
    os.makedirs(out, exist_ok=True)
    for task in D.TASKS:
        for split, reviews in splits.items():
            with open(os.path.join(out, f"{task}.{split}.jsonl"), "w") as f:
                for r in reviews:
                    f.write(json.dumps({"input": r.text(), "target": r.target(task)}) + "\n")


def pretraining_example(rng, held_out):
    """One (input, target) of the pretraining mixture, on a review outside dev / test."""
    while True:
        r = D.Review(rng)
        if r.text() not in held_out:
            break
    pick = rng.random()
    if pick < 0.1:
        return D.span_corruption(r.text(), rng)
    # The longer outputs (translate, name, aspects) get larger shares.
    task = rng.choices(list(D.PREFIXES), weights=[0.6, 1.2, 0.6, 1.2, 3.0])[0]
    return f"{D.PREFIXES[task]} {r.text()}", r.target(task)


def build_tokenizer():
    """A Unigram tokenizer over the demo's words: every word a review, a translation, a prefix or
    an instruction can hold is one piece, and single characters spell anything else (so a
    sentence from a user still tokenizes). Built, not trained: the same file every run."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = set(D.english_words()) | set(D.GLORP.values()) | set(D.ASPECTS)
    for name in D.NAMES:
        words.update(name.split())
    for text in list(D.PREFIXES.values()) + list(D.INSTRUCTIONS.values()):
        words.update(text.replace(",", " ").replace(":", " ").replace("?", " ").split())
    for labels in D.LABELS.values():
        words.update(labels)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789',:?.!-"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -5.0) for w in sorted(words)]
    vocab += [("\u2581", -8.0)] + [("\u2581" + c, -10.0) for c in chars if "\u2581" + c not in dict(vocab)]
    vocab += [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    # <pad>, </s>, <unk> keep their ids and become special (skipped when decoding); T5's
    # sentinels sit at the end of the vocabulary, <extra_id_0> last.
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(D.SENTINELS))])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", 1)]
    )
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("</s>") == 1 and tok.token_to_id("<unk>") == 2
    return tok


def encode(tok, texts):
    """Padded ids [rows, longest] (with </s>) and the mask."""
    import torch

    enc = tok.encode_batch(texts)
    n = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(enc), n, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
    return ids, (ids != 0).long()


def accuracy(model, tok, rows, prefix, batch=100):
    """Greedy exact-match accuracy of `prefix input` -> target."""
    import torch

    good = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            ids, mask = encode(tok, [f"{prefix} {r['input']}" for r in part])
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=False)
            texts = tok.decode_batch(out.tolist(), skip_special_tokens=True)
            good += sum(t.strip() == r["target"] for t, r in zip(texts, part))
    return good / len(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tests/fixtures/models/demo-reviews")
    ap.add_argument("--data", default="tests/fixtures/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    # Optimizer states decay towards denormal floats, which slow CPU arithmetic many times over.
    torch.set_flush_denormal(True)
    started = time.time()

    splits = make_splits(args.seed)
    write_data(splits, args.data)
    held_out = {r.text() for s in ("dev", "test") for r in splits[s]}
    print(f"data: {len(D.TASKS)} tasks x {SPLITS} reviews -> {args.data}", flush=True)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    print(f"tokenizer: Unigram, {vocab} tokens (every demo word one piece)", flush=True)

    config = T5Config(
        vocab_size=vocab, d_model=128, d_kv=32, d_ff=256, num_layers=3, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=64,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True,
        architectures=["T5ForConditionalGeneration"],
    )
    model = T5ForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup)
        * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))),
    )
    rng = random.Random(args.seed + 2)
    model.train()
    t0, window = time.time(), 0.0
    for step in range(1, args.steps + 1):
        pairs = [pretraining_example(rng, held_out) for _ in range(args.batch)]
        ids, mask = encode(tok, [p[0] for p in pairs])
        labels, _ = encode(tok, [p[1] for p in pairs])
        labels[labels == 0] = -100
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window += loss.item()
        if step % 100 == 0 or step == args.steps:
            per = (time.time() - t0) / step
            print(f"step {step}/{args.steps}  loss {window / (100 if step % 100 == 0 else step % 100):.4f}  "
                  f"{per:.3f} s/step  eta {per * (args.steps - step) / 60:.1f} min", flush=True)
            window = 0.0

    # Save: float16 weights (half the bytes; promptd and transformers both read them).
    model.eval()
    # Written beside the destination and swapped in, so an interrupted run leaves the old folder.
    parent = os.path.dirname(os.path.abspath(args.model))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo-model-", dir=parent)
    try:
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        state.pop("encoder.embed_tokens.weight", None)
        state.pop("decoder.embed_tokens.weight", None)
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        cfg = config.to_dict()
        for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "output_hidden_states",
                  "use_return_dict", "output_attentions"):
            cfg.pop(k, None)
        cfg["model_type"] = "t5"
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
            f.write("\n")
        tok.save(os.path.join(tmp, "tokenizer.json"))
        os.chmod(tmp, 0o755)  # readable by a container's non-root user, as a checkout is
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        old = tmp + ".old"
        if os.path.exists(args.model):
            os.rename(args.model, old)
        os.rename(tmp, args.model)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # What transformers reads back from the folder (float16 weights, computed in float32).
    saved = T5ForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    dev = {t: [json.loads(l) for l in open(os.path.join(args.data, f"{t}.dev.jsonl"))] for t in D.TASKS}
    report = {}
    for task, prefix in D.PREFIXES.items():
        report[task] = accuracy(saved, tok, dev[task], prefix)
        print(f"dev accuracy with the prefix {prefix!r}: {task} {report[task]:.3f}", flush=True)
    print(f"done in {(time.time() - started) / 60:.1f} min -> {args.model}", flush=True)


if __name__ == "__main__":
    main()
