#!/usr/bin/env python3
"""Generate the parity fixtures under tests/fixtures/ (committed; tests never run this).

Writes, deterministically (seeded):
  models/<name>/                      tiny random T5 checkpoints in Hugging Face layout, each with a
                                      tokenizer.json (<pad>=0, </s>=1, <unk>=2): one converted from a
                                      sentencepiece model as real T5 ships, one trained Unigram
  prompts/<name>/<task>/              PEFT prompt-tuning adapters (adapter_config.json +
                                      adapter_model.safetensors, [2p, d] as PEFT saves them);
                                      a few tasks also as bare <task>.npy / <task>.safetensors
                                      holding only the encoder rows [p, d]
  expected/<name>.jsonl               greedy tokens from PEFT's generate() and label
                                      log-likelihoods from transformers, one line per case

Usage: python3 scripts/make_fixtures.py [--out tests/fixtures]
Needs: torch, transformers, peft, tokenizers, safetensors, numpy, sentencepiece, protobuf (pip).
"""
import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()

WORDS = (
    "the a of to and in is was for on that with as by at from it his an were are which this be "
    "or has had but not its have they one their new first been two after who all also more time "
    "when there other would into over only can than most state some year people many between "
    "river city model prompt task tenant batch token server engine decoder encoder frozen soft "
    "vector matrix weight memory device kernel queue shared fast slow quick brown fox jumps lazy dog "
    "translate summarize classify positive negative neutral question answer yes no maybe"
).split()

# name -> T5Config kwargs. Family v1.0: relu, tied, lm_head scaled. v1.1: gated-gelu, untied.
MODELS = {
    "t5-v1_0-tiny": dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
        feed_forward_proj="relu", tie_word_embeddings=True, tokenizer="spm",
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
    ),
    "t5-v1_1-tiny": dict(
        d_model=48, d_kv=16, d_ff=80, num_layers=3, num_decoder_layers=2, num_heads=3,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, tokenizer="unigram",
        relative_attention_num_buckets=16, relative_attention_max_distance=24,
    ),
}
SHARDED = {"t5-v1_1-tiny"}
PROMPT_LENGTHS = [1, 2, 3, 4, 5, 7, 8, 10, 12, 16, 20, 24, 30, 32, 40, 50, 60, 64, 75, 80, 90, 99, 100, 20]
BARE_FORMATS = {3: "npy-f32", 7: "npy-f16", 11: "safetensors-f32", 15: "safetensors-bf16"}
VOCAB_EXTRA = 6  # config vocab_size exceeds the tokenizer's, as in real T5 (32128 vs 32100)


def sentence(rng, n_words):
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build_tokenizer(out_dir, rng):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=250, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.75
    )
    corpus = [sentence(rng, rng.randint(3, 30)) for _ in range(3000)]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("</s>") == 1 and tok.token_to_id("<unk>") == 2
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    return Tokenizer.from_file(path)


def build_spm_tokenizer(out_dir, rng):
    """A tokenizer.json shaped like the real T5 ones: a sentencepiece Unigram model converted
    with its Precompiled normalizer, Metaspace, `$A </s>`, and <extra_id_N> special tokens."""
    import sentencepiece as spm
    import sentencepiece.sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken
    from tokenizers.implementations import SentencePieceUnigramTokenizer

    sys.modules.setdefault("sentencepiece_model_pb2", pb)  # where tokenizers looks for it
    work = tempfile.mkdtemp()
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(3000):
            f.write(sentence(rng, rng.randint(3, 30)) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(work, "spm"), vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        minloglevel=2, num_threads=1, seed_sentencepiece_size=100000, shuffle_input_sentence=False,
    )
    tok = SentencePieceUnigramTokenizer.from_spm(os.path.join(work, "spm.model"))._tokenizer
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "</s>", "<unk>")])
    tok.add_special_tokens([f"<extra_id_{i}>" for i in range(9, -1, -1)])
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    shutil.rmtree(work)
    return Tokenizer.from_file(path)


def build_model(name, kwargs, vocab_size, out_dir, seed):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   dropout_rate=0.0, **{k: v for k, v in kwargs.items() if k != "tie_word_embeddings"})
    model = T5ForConditionalGeneration(cfg).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")}
    # HF's init scales make a tiny random model collapse onto one token whatever the input;
    # sharper attention, louder cross-attention and uneven norms make greedy paths depend on
    # the input and on the prompt, so the fixtures can catch mistakes.
    gen = torch.Generator().manual_seed(seed)
    for key, t in state.items():
        if key.endswith("layer_norm.weight"):
            state[key] = 0.5 + torch.rand(t.shape, generator=gen)
        elif re.search(r"SelfAttention\.[qk]\.weight$", key):
            state[key] = t * 3.0
        elif re.search(r"EncDecAttention\.[qkvo]\.weight$", key):
            state[key] = t * 3.0
        elif key.endswith("relative_attention_bias.weight"):
            state[key] = torch.randn(t.shape, generator=gen) * 2.0
    tied = kwargs["tie_word_embeddings"]
    if not tied:
        state["lm_head.weight"] = torch.randn(vocab_size, cfg.d_model, generator=gen) * 0.15
    path = os.path.join(out_dir, name)
    os.makedirs(path, exist_ok=True)
    if name in SHARDED:
        keys = sorted(state)
        half = len(keys) // 2
        shards = [keys[:half], keys[half:]]
        weight_map = {}
        for i, part in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: state[k] for k in part}, os.path.join(path, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
                       "weight_map": weight_map}, f, indent=1)
    else:
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    # A config.json as released checkpoints carry it (transformers 4.x field names).
    config = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": vocab_size, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers, "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0,
        "feed_forward_proj": cfg.feed_forward_proj, "is_encoder_decoder": True, "use_cache": True,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": tied,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
    loaded = T5ForConditionalGeneration.from_pretrained(path).eval()
    if not tied:
        assert not torch.equal(loaded.lm_head.weight, loaded.shared.weight), "lm_head must stay untied"
        assert not loaded.config.scale_decoder_outputs
    else:
        assert loaded.config.scale_decoder_outputs
    return loaded, path


def representable(t):
    """Round to bf16 and flush values that would be f16 subnormals: f32/f16/bf16 exports are then exact."""
    t = t.to(torch.bfloat16).to(torch.float32)
    return torch.where(t.abs() < 1e-4, torch.zeros_like(t), t)


def build_prompts(model, out_dir, seed):
    """PEFT prompt-tuning adapters, saved by PEFT itself. Returns task -> encoder rows [p, d]."""
    tasks = {}
    for i, p in enumerate(PROMPT_LENGTHS):
        task = f"task{i:02d}"
        torch.manual_seed(seed * 1000 + i)
        cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=p)
        peft_model = get_peft_model(model, cfg)
        emb = peft_model.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            emb.copy_(representable(torch.randn_like(emb)))
        tdir = os.path.join(out_dir, task)
        peft_model.save_pretrained(tdir)
        saved = load_file(os.path.join(tdir, "adapter_model.safetensors"))
        assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape[0] == 2 * p
        encoder_rows = saved["prompt_embeddings"][:p].clone()
        model = peft_model.base_model
        fmt = BARE_FORMATS.get(i)
        if fmt is not None:
            shutil.rmtree(tdir)
            kind, dtype = fmt.split("-")
            tdtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
            if kind == "npy":
                np.save(os.path.join(out_dir, f"{task}.npy"), encoder_rows.to(tdtype).numpy())
            else:
                save_file({"prompt": encoder_rows.to(tdtype).contiguous()}, os.path.join(out_dir, f"{task}.safetensors"))
        tasks[task] = encoder_rows
    return model, tasks


def label_scores(model, prompt, input_ids, labels, tok):
    """Sum of log p(label tokens + </s>) under teacher forcing, encoder input [P ; embed(ids)]."""
    scores = []
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.tensor([input_ids]))
        if prompt is not None:
            embeds = torch.cat([prompt[None], embeds], dim=1)
        enc_mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        for label in labels:
            target = tok.encode(label).ids
            dec_in = torch.tensor([[0] + target[:-1]])
            logits = model(inputs_embeds=embeds, attention_mask=enc_mask, decoder_input_ids=dec_in).logits
            logp = torch.log_softmax(logits.float(), dim=-1)[0]
            scores.append(float(logp[torch.arange(len(target)), torch.tensor(target)].sum()))
    return scores


# use_cache=False: transformers 5.x sizes its decoder cache by num_layers and fails when
# num_decoder_layers > num_layers; the uncached decode computes the same thing.
def greedy_peft(model, adapter_dir, input_ids, max_new_tokens):
    with torch.no_grad():
        if adapter_dir is None:
            out = model.generate(input_ids=torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=False)
        else:
            peft_model = PeftModel.from_pretrained(model, adapter_dir).eval()
            out = peft_model.generate(input_ids=torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
                                      max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=False)
    ids = out[0].tolist()[1:]  # drop decoder_start_token_id
    if 1 in ids:
        ids = ids[: ids.index(1) + 1]
    return ids


def greedy_manual(model, prompt, input_ids, max_new_tokens):
    """The same greedy decode without PEFT, from [P ; embed(ids)]: proves PEFT keeps only encoder rows."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.tensor([input_ids]))
        if prompt is not None:
            embeds = torch.cat([prompt[None], embeds], dim=1)
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=False)
    ids = out[0].tolist()[1:]
    if 1 in ids:
        ids = ids[: ids.index(1) + 1]
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    for sub in ("models", "prompts", "expected"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    rng = random.Random(20261126)
    for m_index, (name, kwargs) in enumerate(MODELS.items()):
        kwargs = dict(kwargs)
        tok_dir = os.path.join(out, "models", name)
        os.makedirs(tok_dir, exist_ok=True)
        if kwargs.pop("tokenizer") == "spm":
            tok = build_spm_tokenizer(tok_dir, rng)
        else:
            tok = build_tokenizer(tok_dir, rng)
        vocab_size = tok.get_vocab_size() + VOCAB_EXTRA
        model, mdir = build_model(name, kwargs, vocab_size, os.path.join(out, "models"), seed=100 + m_index)
        pdir = os.path.join(out, "prompts", name)
        os.makedirs(pdir, exist_ok=True)
        model, tasks = build_prompts(model, pdir, seed=200 + m_index)
        model64 = T5ForConditionalGeneration.from_pretrained(mdir).eval().double()
        cases = []
        task_names = [None] + sorted(tasks)
        for c in range(2 * len(task_names)):
            task = task_names[c % len(task_names)]
            # Every 5th input is long enough to reach the far relative-position buckets.
            n_words = rng.randint(90, 160) if c % 5 == 4 else rng.randint(1, 25)
            text = sentence(rng, n_words)
            labels = None
            if c % 3 == 0:
                labels = rng.sample(["positive", "negative", "neutral", "yes", "no", "maybe", "quick brown fox"], 3)
            cases.append((task, text, rng.choice([1, 3, 8, 16, 24]), labels))
        os.makedirs(os.path.join(out, "expected"), exist_ok=True)
        with open(os.path.join(out, "expected", f"{name}.jsonl"), "w") as f:
            for task, text, max_new, labels in cases:
                ids_in = tok.encode(text).ids
                assert ids_in[-1] == 1
                prompt = tasks.get(task)
                adapter = os.path.join(pdir, task) if task and os.path.isdir(os.path.join(pdir, task)) else None
                if adapter is not None or task is None:
                    got = greedy_peft(model, adapter, ids_in, max_new)
                    assert got == greedy_manual(model, prompt, ids_in, max_new), (name, task, text)
                else:
                    got = greedy_manual(model, prompt, ids_in, max_new)
                line = {"task": task, "input": text, "max_new_tokens": max_new, "input_ids": ids_in,
                        "prompt_length": 0 if prompt is None else prompt.shape[0],
                        "token_ids": got, "text": tok.decode(got, skip_special_tokens=True)}
                if labels:
                    line["labels"] = labels
                    line["scores"] = label_scores(model, prompt, ids_in, labels, tok)
                    # The same in float64: how far transformers' own f32 sums are from exact.
                    line["scores_f64"] = label_scores(model64, None if prompt is None else prompt.double(),
                                                      ids_in, labels, tok)
                f.write(json.dumps(line) + "\n")
        print(f"{name}: {len(cases)} cases, {len(tasks)} tasks")


if __name__ == "__main__":
    main()
