#!/usr/bin/env python3
"""The anchor for promptd's int8 accuracy on random models (tests/it/int8.rs): PyTorch's own
dynamic int8 (`torch.ao.quantization.quantize_dynamic`, per-tensor int8 weights and
activations, fbgemm) against f32 on random T5 checkpoints, by greedy tokens (12 new tokens,
manual greedy without a cache) and label log-likelihoods (three random tokens + </s>).

    python3 scripts/int8_random_models.py MODEL_DIR [MODEL_DIR ...]

A model folder with no weights yet is made first: `hf-v1_0-small` (transformers' own init of a
t5-small v1.0 config: ReLU, d_ff 2048, head tied to the embeddings; seed 0). promptd's own
synthetic v1.1 (`promptd-dev make-model --shape small --out DIR`) is the other kind to compare.
Needs: torch, transformers (pip).
"""
import json
import os
import sys
import warnings

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.utils import logging

warnings.filterwarnings("ignore")
logging.set_verbosity_error()


def make_hf_small(path):
    torch.manual_seed(0)
    cfg = T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64, vocab_size=32128,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).eval().save_pretrained(path)


def greedy(model, ids, steps):
    encoded = model.get_encoder()(input_ids=ids).last_hidden_state
    dec, out = torch.tensor([[0]]), []
    for _ in range(steps):
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=dec, use_cache=False).logits
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == 1:
            break
        dec = torch.cat([dec, torch.tensor([[token]])], 1)
    return out


def main():
    torch.set_num_threads(2)
    for path in sys.argv[1:]:
        if not os.path.exists(os.path.join(path, "config.json")):
            make_hf_small(path)
        with torch.no_grad():
            f32 = T5ForConditionalGeneration.from_pretrained(path).eval()
            int8 = torch.ao.quantization.quantize_dynamic(f32, {torch.nn.Linear}, dtype=torch.qint8,
                                                          inplace=False)
            gen = torch.Generator().manual_seed(1)
            same, rel = 0, []
            rows = 20
            for _ in range(rows):
                n = int(torch.randint(4, 17, (1,), generator=gen))
                ids = torch.cat([torch.randint(3, 32000, (1, n), generator=gen), torch.tensor([[1]])], 1)
                label = torch.cat([torch.randint(3, 32000, (1, 3), generator=gen), torch.tensor([[1]])], 1)
                same += greedy(f32, ids, 12) == greedy(int8, ids, 12)
                a = -f32(input_ids=ids, labels=label).loss.item() * label.shape[1]
                b = -int8(input_ids=ids, labels=label).loss.item() * label.shape[1]
                rel.append(abs(a - b) / abs(a))
        print(json.dumps({"model": path, "rows": rows, "greedy_equal": same,
                          "label_rel_mean": sum(rel) / len(rel), "label_rel_max": max(rel)}))


if __name__ == "__main__":
    main()
