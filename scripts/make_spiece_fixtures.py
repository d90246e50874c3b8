#!/usr/bin/env python3
"""Generate the spiece.model tokenizer fixtures under tests/fixtures/spiece/ (committed; tests never
run this).

Trains a small SentencePiece Unigram model (seeded, single-threaded, T5's special ids <pad>=0,
</s>=1, <unk>=2, the default nmt_nfkc normalization so the model carries a precompiled charsmap),
then for each variant writes a model folder the way `T5Tokenizer.save_pretrained` does, minus
`tokenizer.json`, and records what transformers' T5 fast tokenizer, built from that folder's
spiece.model, gives for a list of awkward inputs.

Writes:
  spiece.model                the one SentencePiece model (shared by the variants: it is the largest file)
  <variant>/*.json            the variant's tokenizer_config.json / special_tokens_map.json / added_tokens.json
  expected.json               {variant: [{text, ids (with </s>), decoded}]}
  identity/spiece.model       a second, tiny model trained with normalization_rule_name=identity
                              (no charsmap: no normalizer), and identity/expected.json
  model/                      a tiny random T5 v1.1 (vocab 408) as the older releases ship it:
                              config.json + pytorch_model.bin, for spiece.model + "saved"'s files
  model.jsonl                 transformers' greedy tokens and label log-likelihoods for that
                              folder (the tests/it/common Case format; no prompt)

The Rust test copies spiece.model next to a variant's files and compares.

Usage: python3 scripts/make_spiece_fixtures.py [--out tests/fixtures/spiece]
Needs: pip install transformers sentencepiece protobuf tokenizers
"""
import argparse
import copy
import json
import os
import random
import shutil
import tempfile
import warnings

import sentencepiece as spm
from transformers import T5TokenizerFast
from transformers.utils import logging as hf_logging

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()

WORDS = (
    "the a of to and in is was for on that with as by at from it his an were are which this be "
    "or has had but not its have they one their new first been two after who all also more time "
    "café naïve résumé über straße señor façade élève déjà vu Ångström "
    "東京 日本語 中文 你好 世界 こんにちは 한국어 "
    "2024 1999 42 7 3.14 100% $5 #1 "
    "hello world! what? yes, no; maybe: (quoted) \"double\" 'single' don't can't"
).split()

INPUTS = [
    "hello world",
    "  leading and trailing spaces   ",
    "many     repeated      spaces",
    "tabs\tand\nnewlines\r\nmixed \t \n whitespace",
    "café naïve résumé über straße",
    "Ångström and Ångström (composed vs decomposed A-ring)",
    "東京 is in 日本; 你好世界",
    "emoji 🙂 and 👍🏽 and 🇫🇷 flags",
    "full-width digits １２３ and letters ＡＢＣ, ligature ﬁ ﬂ, ½ ⅓, ㎏, Ⅻ",
    "digits 1234567890 and 3.14159 and 2024-01-02",
    "unknown characters ⟁ ꙮ 𓀀 ☃",
    "<extra_id_0> is a sentinel and so is <extra_id_99>",
    "fill <extra_id_0> the <extra_id_1> blanks<extra_id_2>glued",
    "<extra_id_5>",
    "an unknown sentinel <extra_id_100> stays text",
    "special tokens in text: </s> <pad> <unk> <sep>",
    "an added token <new> and<new>glued",
    "punctuation: don't, can't! what? (yes) \"no\" 'maybe' ... -- end.",
    "",
    " ",
    "a",
    "ＴＥＳＴ　ideographic　space",
    "zero\u200bwidth and soft\u00adhyphen and nbsp\u00a0here",
    "combining e\u0301 and precomposed é",
    "MiXeD CaSe ThE QuIcK BrOwN",
]

# variant -> kwargs to T5TokenizerFast before save_pretrained (None: only spiece.model, no json
# files), or a dict of hand-written files (a folder as transformers 4 wrote it: special tokens in
# special_tokens_map.json, as strings and as AddedToken dicts).
V4_SPECIALS = [f"<extra_id_{i}>" for i in range(100)]
VARIANTS = {
    "bare": None,
    "saved": dict(extra_ids=100),
    "extra10": dict(extra_ids=10),
    "v4": {
        "tokenizer_config.json": {
            "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 100,
            "additional_special_tokens": V4_SPECIALS, "model_max_length": 512,
            "tokenizer_class": "T5Tokenizer", "legacy": True,
        },
        "special_tokens_map.json": {
            "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False},
            "unk_token": "<unk>", "pad_token": "<pad>",
            "additional_special_tokens": V4_SPECIALS,
        },
    },
    # No sentinels, one token added after the pieces (added_tokens.json pins its id).
    "added": {
        "tokenizer_config.json": {"extra_ids": 0, "tokenizer_class": "T5Tokenizer"},
        "added_tokens.json": {"<new>": 300},
    },
}


SYLLABLES = "ka ri to mo ne sha lu vin der stra pol que zen ith or an el".split()


def word(rng):
    if rng.random() < 0.6:
        return rng.choice(WORDS)
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))


def corpus_lines(rng, n):
    return [" ".join(word(rng) for _ in range(rng.randint(3, 25))) for _ in range(n)]


def train(work, rng):
    spm.set_random_generator_seed(7)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_lines(rng, 3000)) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(work, "spiece"), vocab_size=300, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        user_defined_symbols=["<sep>"], character_coverage=0.9995, minloglevel=2, num_threads=1,
        shuffle_input_sentence=False,
    )
    # The trainer records its (temporary) input paths; keep the committed file reproducible.
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = os.path.join(work, "spiece.model")
    proto = pb.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("corpus.txt")
    proto.trainer_spec.model_prefix = "spiece"
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def expected_for(folder):
    assert not os.path.exists(os.path.join(folder, "tokenizer.json"))
    tok = T5TokenizerFast.from_pretrained(folder)
    cases = []
    for text in INPUTS:
        ids = tok(text)["input_ids"]
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    return cases


MODEL_INPUTS = ["hello world", "café naïve résumé", "東京 is in 日本", "fill <extra_id_0> the blanks",
                "digits 1234 and ＡＢＣ", "many     repeated      spaces", "a", "what? yes, no; maybe"]
LABELS = ["yes", "no", "<extra_id_0> maybe"]


def label_scores(model, ids, tok):
    """Sum of log p(label tokens + </s>) under teacher forcing, one per label."""
    import torch

    row = []
    for label in LABELS:
        target = tok(label)["input_ids"]
        logits = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([[0] + target[:-1]])).logits
        logp = torch.log_softmax(logits, -1)[0]
        row.append(float(logp[torch.arange(len(target)), torch.tensor(target)].sum()))
    return row


def write_model(out, folder):
    """A tiny T5 v1.1 for the spiece tokenizer, as pytorch_model.bin, and what transformers says."""
    import re

    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(15)
    cfg = T5Config(vocab_size=408, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                   num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(15)
    with torch.no_grad():
        # As in make_fixtures.py: sharper attention and uneven norms, so outputs depend on inputs.
        for key, t in model.state_dict().items():
            if key.endswith("layer_norm.weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif re.search(r"(SelfAttention|EncDecAttention)\.[qk]\.weight$", key):
                t.mul_(3.0)
            elif key.endswith("relative_attention_bias.weight"):
                t.copy_(torch.randn(t.shape, generator=gen) * 2.0)
    d = os.path.join(out, "model")
    os.makedirs(d, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(d, "pytorch_model.bin"))
    conf = cfg.to_dict()
    conf = {k: conf[k] for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
                                 "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance",
                                 "layer_norm_epsilon", "feed_forward_proj", "pad_token_id", "eos_token_id",
                                 "decoder_start_token_id", "tie_word_embeddings")}
    # As released v1.1 configs say it (transformers 5's to_dict() reports the tie differently).
    conf.update(model_type="t5", architectures=["T5ForConditionalGeneration"], tie_word_embeddings=False)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f, indent=1)
    reloaded = T5ForConditionalGeneration.from_pretrained(d).eval()
    probe = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        a = model(input_ids=probe, decoder_input_ids=torch.tensor([[0, 5]])).logits
        b = reloaded(input_ids=probe, decoder_input_ids=torch.tensor([[0, 5]])).logits
    assert torch.equal(a, b), "the saved folder must be the model the expectations come from"
    tok = T5TokenizerFast.from_pretrained(folder)
    model64 = copy.deepcopy(model).double()
    lines = []
    with torch.no_grad():
        for i, text in enumerate(MODEL_INPUTS):
            ids = tok(text)["input_ids"]
            out_ids = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                     num_beams=1, use_cache=False)[0].tolist()[1:]
            if 1 in out_ids:
                out_ids = out_ids[: out_ids.index(1) + 1]
            line = {"task": None, "input": text, "max_new_tokens": 6, "input_ids": ids, "token_ids": out_ids,
                    "text": tok.decode(out_ids, skip_special_tokens=True)}
            if i % 2 == 0:
                scores = [label_scores(m, ids, tok) for m in (model, model64)]
                line.update(labels=LABELS, scores=scores[0], scores_f64=scores[1])
            lines.append(json.dumps(line, ensure_ascii=False))
    with open(os.path.join(out, "model.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def write_identity(out, work, rng):
    """A model without a precompiled charsmap: transformers then uses no normalizer at all."""
    d = os.path.join(work, "identity")
    os.makedirs(d)
    corpus = os.path.join(work, "identity.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_lines(rng, 1500)) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(d, "spiece"), vocab_size=150, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="identity", minloglevel=2,
        num_threads=1, shuffle_input_sentence=False,
    )
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = os.path.join(d, "spiece.model")
    proto = pb.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    assert len(proto.normalizer_spec.precompiled_charsmap) == 0
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("identity.txt")
    proto.trainer_spec.model_prefix = "spiece"
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    dst = os.path.join(out, "identity")
    os.makedirs(dst, exist_ok=True)
    shutil.copy(path, os.path.join(dst, "spiece.model"))
    with open(os.path.join(dst, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected_for(d), f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/spiece")
    args = ap.parse_args()
    rng = random.Random(15)
    work = tempfile.mkdtemp()
    try:
        model = train(work, rng)
        os.makedirs(args.out, exist_ok=True)
        shutil.copy(model, os.path.join(args.out, "spiece.model"))
        expected = {}
        for name, kwargs in VARIANTS.items():
            folder = os.path.join(work, name)
            os.makedirs(folder)
            shutil.copy(model, os.path.join(folder, "spiece.model"))
            if isinstance(kwargs, dict) and kwargs and all(k.endswith(".json") for k in kwargs):
                for fname, content in kwargs.items():
                    with open(os.path.join(folder, fname), "w") as f:
                        json.dump(content, f, indent=1)
            elif kwargs is not None:
                tmp = os.path.join(work, name + "-src")
                os.makedirs(tmp)
                shutil.copy(model, os.path.join(tmp, "spiece.model"))
                T5TokenizerFast.from_pretrained(tmp, **kwargs).save_pretrained(folder)
                # What users have: the slow tokenizer's files, no tokenizer.json.
                os.remove(os.path.join(folder, "tokenizer.json"))
            expected[name] = expected_for(folder)
            if name == "saved":
                write_model(args.out, folder)
            out_dir = os.path.join(args.out, name)
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
            for f in sorted(os.listdir(folder)):
                if f.endswith(".json"):
                    shutil.copy(os.path.join(folder, f), os.path.join(out_dir, f))
            # git keeps no empty folders
            with open(os.path.join(out_dir, "README"), "w") as f:
                f.write("Tokenizer files of this variant; tests add ../spiece.model.\n")
        write_identity(args.out, work, rng)
        with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(expected, f, ensure_ascii=False, indent=1)
            f.write("\n")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
