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

The Rust test copies spiece.model next to a variant's files and compares.

Usage: python3 scripts/make_spiece_fixtures.py [--out tests/fixtures/spiece]
Needs: pip install transformers sentencepiece protobuf tokenizers
"""
import argparse
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
            out_dir = os.path.join(args.out, name)
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
            for f in sorted(os.listdir(folder)):
                if f.endswith(".json"):
                    shutil.copy(os.path.join(folder, f), os.path.join(out_dir, f))
            # git keeps no empty folders
            with open(os.path.join(out_dir, "README"), "w") as f:
                f.write("Tokenizer files of this variant; tests add ../spiece.model.\n")
        with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(expected, f, ensure_ascii=False, indent=1)
            f.write("\n")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
