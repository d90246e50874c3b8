#!/usr/bin/env python3
"""CTranslate2 on the batch `promptd-dev engine-pass` runs, without soft prompts (CTranslate2
has none): the same model folder converted once to a CTranslate2 f32 model (cached in
MODEL/ct2-f32), the same rows ({"input"} JSON lines; any "task" is ignored), each input
tokenized with the model's tokenizer.json and ended with </s> as transformers does, all rows in
one `translate_batch` call, greedy (beam 1, top-k 1), stopping at </s> or after --new-tokens,
f32 on CPU with --threads intra-op threads. Prints one JSON line
{"median_ms", "min_ms", "rows", "tokens"} like engine-pass and scripts/bench_engine_vs_hf.py
(tokens: each row's generated ids without the decoder start token, with the final </s> when
produced), so scripts/bench-vs-ct2.sh compares the two side by side.

--check also runs transformers' greedy generate() (no prompts, input_ids right-padded with an
attention mask) on the same batch, reports on stderr how many rows chose the same tokens, and
exits 1 when any differ.

    pip install ctranslate2 tokenizers   # plus torch + transformers to convert (once) and --check
    python3 scripts/bench_ct2.py --model bench-models/small --rows rows.jsonl --new-tokens 16
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import ctranslate2
from tokenizers import Tokenizer


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def convert(model_dir: pathlib.Path, out: pathlib.Path):
    """HF T5 folder -> CTranslate2 f32 model in `out` (skipped when already there).

    The stock converter loads the tokenizer with AutoTokenizer, which on a folder holding only
    config.json + tokenizer.json may pick a slow sentencepiece class or miss the special
    tokens; hand it a fast tokenizer built straight from tokenizer.json instead. Its vocabulary
    (ordered by id) becomes the CTranslate2 source and target vocabulary."""
    if (out / "model.bin").is_file():
        return
    from ctranslate2.converters import TransformersConverter
    from transformers import PreTrainedTokenizerFast

    from ctranslate2.specs import model_spec

    config = json.loads((model_dir / "config.json").read_text())

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return PreTrainedTokenizerFast(
                tokenizer_file=str(pathlib.Path(model_name_or_path) / "tokenizer.json"),
                pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
            )

        def _load(self):
            spec = super()._load()
            # T5 v1.1 (tie_word_embeddings: false in config.json) does not scale the decoder
            # output by d_model**-0.5 before lm_head. transformers >= 5 forces
            # config.tie_word_embeddings = True (keeping the old meaning in
            # config.scale_decoder_outputs), and the ct2 converter reads the former, so it
            # would scale v1.1 logits too: greedy argmax is the same, scores are not.
            if config.get("tie_word_embeddings", True) is False:
                spec.decoder.scale_outputs = model_spec.OPTIONAL
            spec.config.layer_norm_epsilon = config.get("layer_norm_epsilon", 1e-6)
            return spec

    log(f"converting {model_dir} -> {out} (ctranslate2 {ctranslate2.__version__}, float32)")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".ct2-", dir=out.parent))
    try:
        Converter(str(model_dir), load_as_float16=False).convert(
            str(tmp / "m"), quantization="float32", force=True)
        os.replace(tmp / "m", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hf_greedy(model_dir, ids, new_tokens, threads, eos):
    """transformers' greedy tokens for the batch, no prompts: what --check compares with."""
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation="sdpa").eval()
    width = max(len(x) for x in ids)
    pad = model.config.pad_token_id
    batch = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    with torch.no_grad():
        out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=new_tokens,
                             do_sample=False, num_beams=1)
    tokens = []
    for row in out.tolist():
        cut = []
        for t in row[1:]:  # the decoder start token
            cut.append(t)
            if t == eos:
                break
        tokens.append(cut)
    return tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", help="accepted and ignored: CTranslate2 has no soft prompts")
    ap.add_argument("--rows", required=True)
    ap.add_argument("--new-tokens", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ct2-dir", help="converted model folder (default MODEL/ct2-f32)")
    ap.add_argument("--compute-type", default="float32",
                    help="float32, or int8 (CTranslate2 quantizes the f32 model as it loads it)")
    ap.add_argument("--check", action="store_true",
                    help="compare with transformers' greedy tokens (needs torch + transformers)")
    args = ap.parse_args()
    model_dir = pathlib.Path(args.model)
    ct2_dir = pathlib.Path(args.ct2_dir) if args.ct2_dir else model_dir / "ct2-f32"
    convert(model_dir, ct2_dir)

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    config = json.loads((model_dir / "config.json").read_text())
    eos = config.get("eos_token_id", 1)
    eos_tok = tok.id_to_token(eos)
    rows = [json.loads(l) for l in open(args.rows) if l.strip()]
    # as bench_engine_vs_hf.py: the input without special tokens, then </s>
    ids = [tok.encode(r["input"], add_special_tokens=False).ids + [eos] for r in rows]
    source = [[tok.id_to_token(i) for i in x] for x in ids]

    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=args.compute_type,
                                        intra_threads=args.threads, inter_threads=1)

    def once():
        return translator.translate_batch(
            source,
            max_batch_size=0,  # all rows in one batch, in the given order
            beam_size=1,
            sampling_topk=1,  # greedy argmax, as generate(do_sample=False, num_beams=1)
            num_hypotheses=1,
            end_token=eos_tok,
            return_end_token=True,  # keep the final </s>, as HF and engine-pass do
            max_input_length=0,  # no truncation (the default cuts inputs at 1024 tokens)
            max_decoding_length=args.new_tokens,
            min_decoding_length=0,  # HF's min_length is 0: </s> may come first
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            disable_unk=False,
            return_scores=False,
        )

    times, out = [], None
    for i in range(args.warmup + max(args.repeats, 1)):
        t = time.perf_counter()
        out = once()
        ms = (time.perf_counter() - t) * 1e3
        if i >= args.warmup:
            times.append(ms)
    tokens = []
    for r in out:
        cut = []
        for s in r.hypotheses[0]:
            t = tok.token_to_id(s)
            if t is None:
                raise SystemExit(f"CTranslate2 produced {s!r}, not in tokenizer.json")
            cut.append(t)
            if t == eos:
                break
        tokens.append(cut)
    print(json.dumps({
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "rows": len(rows),
        "tokens": tokens,
    }), flush=True)

    if args.check:
        theirs = hf_greedy(str(model_dir), ids, args.new_tokens, args.threads, eos)
        same = sum(a == b for a, b in zip(tokens, theirs))
        log(f"check: {same}/{len(rows)} rows match transformers' greedy tokens")
        for i, (a, b) in enumerate(zip(tokens, theirs)):
            if a != b:
                log(f"  row {i}: ct2 {a}\n  row {i}: hf  {b}")
        if same != len(rows):
            sys.exit(1)


if __name__ == "__main__":
    main()
