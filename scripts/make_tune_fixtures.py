#!/usr/bin/env python3
"""Generate the prompt-tuning fixtures under tests/fixtures/tune/ (committed; tests never run this).

For each tiny model in tests/fixtures/models/ (made by make_fixtures.py) writes, deterministically
(seeded), tune/<model>/:
  train.jsonl             6 rows {"input", "target"}: inputs of distinct lengths (3-20 words) so
                          right-padding matters; targets of 1-3 words so label lengths differ
  p0.safetensors          `prompt` [4, d_model] f32: the starting soft prompt (randn * 0.5)
  expected.json           prompt_length; input_ids and labels per row (tokenizer.json encode, ending
                          with </s>=1); loss (f32) and loss_f64 of transformers'
                          T5ForConditionalGeneration(inputs_embeds=[P ; embed(ids)], attention_mask,
                          labels padded with -100) at P0 over all 6 rows in one batch (inputs
                          right-padded with id 0, mask 0; eval mode, frozen weights);
                          adafactor_losses / adam_losses: the loss before each of 3 steps
  grad.safetensors        `grad` dLoss/dP at P0 [4, d] f32, `grad_f64` the same in float64
  adafactor.safetensors   `step1`..`step3`: P (f32) after each transformers Adafactor step;
                          `grad1`..`grad3`: the gradient each step used; `f64_step1`..`f64_step3`:
                          the same run in float64
                          (lr=0.3, scale_parameter/relative_step/warmup_init False, decay_rate=-0.8,
                          weight_decay=1e-5, clip_threshold=1.0, beta1=None)
  adam.safetensors        `step1`..`step3`: P after each torch.optim.Adam(lr=0.01) step, and
                          `grad1`..`grad3`
  sgd.safetensors         `step1`: P after one torch.optim.SGD(lr=1.0) step (= P0 - grad)
Each step: zero grad, loss on the full 6-row batch, backward, step.

Usage: python3 scripts/make_tune_fixtures.py [--models tests/fixtures/models] [--out tests/fixtures/tune]
Needs: torch, transformers, tokenizers, safetensors, and what make_fixtures.py imports (peft) (pip).
"""
import argparse
import json
import os
import random
import shutil
import sys
import warnings

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration
from transformers.optimization import Adafactor
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import WORDS  # noqa: E402

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

MODEL_NAMES = ["t5-v1_0-tiny", "t5-v1_1-tiny"]
PROMPT_LENGTH = 4
ROWS = 6
STEPS = 3
# One multi-word target so label lengths differ within the batch.
TARGETS = ["positive", "negative", "neutral", "quick brown fox", "positive", "negative"]
IGNORE = -100  # transformers' CrossEntropyLoss ignore_index


def make_rows(rng):
    n_words = rng.sample(range(3, 21), ROWS)  # distinct lengths: every row but the longest is padded
    targets = list(TARGETS)
    rng.shuffle(targets)
    return [{"input": " ".join(rng.choice(WORDS) for _ in range(n)), "target": t}
            for n, t in zip(n_words, targets)]


def encode(tok, text):
    ids = tok.encode(text).ids
    assert ids and ids[-1] == 1, (text, ids)  # `$A </s>`
    return ids


def batch(input_ids, labels):
    """Right-padded encoder ids (pad 0, mask 0) and labels padded with -100."""
    n_in = max(map(len, input_ids))
    n_lab = max(map(len, labels))
    ids = torch.tensor([r + [0] * (n_in - len(r)) for r in input_ids])
    mask = torch.tensor([[1] * len(r) + [0] * (n_in - len(r)) for r in input_ids])
    lab = torch.tensor([r + [IGNORE] * (n_lab - len(r)) for r in labels])
    return ids, mask, lab


def tune_loss(model, prompt, ids, mask, labels):
    """transformers' own loss with encoder input [P ; embed(ids)] and mask [1 x P ; mask]."""
    rows = ids.shape[0]
    embeds = model.get_input_embeddings()(ids)
    embeds = torch.cat([prompt[None].expand(rows, -1, -1), embeds], dim=1)
    full_mask = torch.cat([torch.ones(rows, prompt.shape[0], dtype=mask.dtype), mask], dim=1)
    return model(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).loss


def load_frozen(path, dtype):
    model = T5ForConditionalGeneration.from_pretrained(path).to(dtype).eval()  # eval: no dropout
    model.requires_grad_(False)
    return model


def run_optimizer(model, p0, make_opt, steps, batch_t):
    prompt = p0.clone().requires_grad_(True)
    opt = make_opt([prompt])
    losses, states, grads = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = tune_loss(model, prompt, *batch_t)
        loss.backward()
        grads.append(prompt.grad.detach().clone())
        opt.step()
        losses.append(float(loss))
        states.append(prompt.detach().clone())
    run_optimizer.grads = grads
    return losses, states


def build(model_dir, out_dir, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    model = load_frozen(model_dir, torch.float32)
    model64 = load_frozen(model_dir, torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    before64 = {k: v.clone() for k, v in model64.state_dict().items()}
    d_model = model.config.d_model

    rows = make_rows(rng)
    input_ids = [encode(tok, r["input"]) for r in rows]
    labels = [encode(tok, r["target"]) for r in rows]
    assert len(set(map(len, input_ids))) == ROWS and len(set(map(len, labels))) > 1
    batch_t = batch(input_ids, labels)
    p0 = (torch.randn(PROMPT_LENGTH, d_model) * 0.5).contiguous()

    prompt = p0.clone().requires_grad_(True)
    loss = tune_loss(model, prompt, *batch_t)
    assert loss.dtype == torch.float32
    loss.backward()
    grad = prompt.grad.detach().clone()

    prompt64 = p0.double().requires_grad_(True)
    loss64 = tune_loss(model64, prompt64, *batch_t)
    assert loss64.dtype == torch.float64
    loss64.backward()
    grad64 = prompt64.grad.detach().clone()

    def adafactor(ps):
        return Adafactor(ps, lr=0.3, scale_parameter=False, relative_step=False, warmup_init=False,
                         decay_rate=-0.8, weight_decay=1e-5, clip_threshold=1.0, beta1=None)

    ada_losses, ada_states = run_optimizer(model, p0, adafactor, STEPS, batch_t)
    ada_grads = run_optimizer.grads
    # The same run in float64: how far transformers' own float32 trajectory drifts from exact
    # (Adafactor's per-row/column normalisation amplifies rounding after the first step).
    _, ada_states64 = run_optimizer(model64, p0.double(), adafactor, STEPS, batch_t)
    adam_losses, adam_states = run_optimizer(model, p0, lambda ps: torch.optim.Adam(ps, lr=0.01), STEPS, batch_t)
    adam_grads = run_optimizer.grads
    _, sgd_states = run_optimizer(model, p0, lambda ps: torch.optim.SGD(ps, lr=1.0), 1, batch_t)
    assert ada_losses[0] == adam_losses[0] == float(loss)
    # transformers averages over all non-ignored label tokens of the batch (not per row first), and
    # right-padding the encoder input with mask 0 changes nothing: rows one at a time, unpadded, agree.
    with torch.no_grad():
        total, count = 0.0, 0
        for ids_r, lab_r in zip(input_ids, labels):
            one = tune_loss(model64, p0.double(), torch.tensor([ids_r]), torch.ones(1, len(ids_r), dtype=torch.long),
                            torch.tensor([lab_r]))
            total, count = total + float(one) * len(lab_r), count + len(lab_r)
    assert abs(total / count - float(loss64)) < 1e-12, (total / count, float(loss64))
    assert torch.equal(sgd_states[0], p0 - grad)

    for m, ref in ((model, before), (model64, before64)):  # frozen: not one bit moved
        after = m.state_dict()
        assert after.keys() == ref.keys()
        assert all(torch.equal(after[k], ref[k]) for k in ref), "model weights changed"
        assert all(not p.requires_grad and p.grad is None for p in m.parameters())

    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "train.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    meta = {"format": "pt"}
    save_file({"prompt": p0}, os.path.join(out_dir, "p0.safetensors"), metadata=meta)
    save_file({"grad": grad.contiguous(), "grad_f64": grad64.contiguous()},
              os.path.join(out_dir, "grad.safetensors"), metadata=meta)
    for name, states, grads, states64 in (("adafactor", ada_states, ada_grads, ada_states64),
                                          ("adam", adam_states, adam_grads, []),
                                          ("sgd", sgd_states, [], [])):
        tensors = {f"step{i + 1}": s.contiguous() for i, s in enumerate(states)}
        tensors.update({f"grad{i + 1}": g.contiguous() for i, g in enumerate(grads)})
        tensors.update({f"f64_step{i + 1}": s.contiguous() for i, s in enumerate(states64)})
        save_file(tensors, os.path.join(out_dir, f"{name}.safetensors"), metadata=meta)
    expected = {
        "prompt_length": PROMPT_LENGTH,
        "input_ids": input_ids,
        "labels": labels,
        "loss": float(loss),
        "loss_f64": float(loss64),
        "adafactor_losses": ada_losses,
        "adam_losses": adam_losses,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:  # one key a line, rows one a line
        f.write("{\n" + ",\n".join(
            f" {json.dumps(k)}: " + ("[\n" + ",\n".join("  " + json.dumps(r) for r in v) + "\n ]"
                                    if k in ("input_ids", "labels") else json.dumps(v))
            for k, v in expected.items()) + "\n}\n")
    assert json.load(open(os.path.join(out_dir, "expected.json"))) == expected
    rel = float((grad.double() - grad64).norm() / grad64.norm())
    print(f"{os.path.basename(out_dir)}: loss {float(loss):.6f} (f64 {float(loss64):.6f}), "
          f"grad rel err {rel:.2e}, adafactor {ada_losses}, adam {adam_losses}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(here, "..", "tests", "fixtures", "models"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "tune"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = os.path.abspath(args.out)
    for m_index, name in enumerate(MODEL_NAMES):
        build(os.path.join(os.path.abspath(args.models), name), os.path.join(out, name), seed=20261200 + m_index)


if __name__ == "__main__":
    main()
