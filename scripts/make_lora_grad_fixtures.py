#!/usr/bin/env python3
"""LoRA and IA3 gradient fixtures (committed; tests never run this): `--method lora|ia3`.

For each tiny model, over the 6-row batch of tests/fixtures/tune/<model>/expected.json (made by
make_tune_fixtures.py), writes tests/fixtures/tune/<model>/lora/:
  adapter_config.json, adapter_model.safetensors   a PEFT LoRA (rank 4, alpha 8, q and v of every
                                                    attention, lora_dropout 0) saved by PEFT with
                                                    seeded random A and B (B non-zero, so every
                                                    factor gets a gradient)
  grad.json                                         PEFT's training loss on the batch (eval mode:
                                                    no dropout; labels padded with -100), in
                                                    float32 and float64, and dLoss/d(each tensor),
                                                    by its saved name, as flat lists (both runs);
                                                    `adam_step`: each tensor after one
                                                    torch.optim.Adam(lr=0.01) step (float32)
and tests/fixtures/tune/<model>/ia3/ the same for an IA3 adapter (k, v and wo's input, PEFT's T5
default) with seeded vectors 1 + 0.1·N(0, 1) (so the model differs from the frozen one).
Usage: python3 scripts/make_lora_grad_fixtures.py
Needs: torch, transformers, peft, safetensors (pip).
"""
import json
import os
import warnings

import torch
from transformers import T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from peft import IA3Config, LoraConfig, PeftModel, TaskType, get_peft_model

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def batch(expected):
    ids, labels = expected["input_ids"], expected["labels"]
    n_in, n_lab = max(map(len, ids)), max(map(len, labels))
    return (torch.tensor([r + [0] * (n_in - len(r)) for r in ids]),
            torch.tensor([[1] * len(r) + [0] * (n_in - len(r)) for r in ids]),
            torch.tensor([r + [-100] * (n_lab - len(r)) for r in labels]))


def loss_and_grads(model_dir, adapter_dir, dtype, ids, mask, labels):
    """PEFT's loss and gradients, and the factors after one torch.optim.Adam(lr=0.01) step."""
    base = T5ForConditionalGeneration.from_pretrained(model_dir).to(dtype).eval()
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True).to(dtype).eval()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads, params = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = name.replace(".default", "")
            grads[key] = p.grad.double().flatten().tolist()
            params[key] = p
    torch.optim.Adam(list(params.values()), lr=0.01).step()
    stepped = {k: p.detach().double().flatten().tolist() for k, p in params.items()}
    return float(loss), grads, stepped


def kinds():
    """(folder, PEFT config, seed base, initial value of a random draw)."""
    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q", "v"])
    ia3 = IA3Config(task_type=TaskType.SEQ_2_SEQ_LM, target_modules=["k", "v", "wo"],
                    feedforward_modules=["wo"])
    return [("lora", lora, 500, lambda x: 0.05 * x), ("ia3", ia3, 600, lambda x: 1.0 + 0.1 * x)]


def main():
    torch.set_num_threads(1)
    for (kind, cfg, seed, draw) in kinds():
        for m_index, name in enumerate(["t5-v1_0-tiny", "t5-v1_1-tiny"]):
            write(kind, cfg, seed + m_index, draw, name)


def write(kind, cfg, seed, draw, name):
    model_dir = os.path.join(ROOT, "models", name)
    out = os.path.join(ROOT, "tune", name, kind)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(ROOT, "tune", name, "expected.json")) as f:
        expected = json.load(f)
    peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(model_dir), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if p.requires_grad:
                p.copy_(draw(torch.randn(p.shape, generator=gen)).to(torch.bfloat16).float())
    peft_model.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    config["target_modules"] = sorted(config["target_modules"])
    if "feedforward_modules" in config:
        config["feedforward_modules"] = sorted(config["feedforward_modules"])
    config["base_model_name_or_path"] = name
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    ids, mask, labels = batch(expected)
    loss32, grads32, adam32 = loss_and_grads(model_dir, out, torch.float32, ids, mask, labels)
    loss64, grads64, _ = loss_and_grads(model_dir, out, torch.float64, ids, mask, labels)
    with open(os.path.join(out, "grad.json"), "w") as f:
        json.dump({"loss": loss32, "loss_f64": loss64, "grads": grads32, "grads_f64": grads64,
                   "adam_step": adam32}, f)
    print(f"{name} {kind}: loss {loss32:.6f}, {len(grads64)} tensors")


if __name__ == "__main__":
    main()
