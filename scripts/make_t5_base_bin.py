#!/usr/bin/env python3
"""Write a random t5-base-shaped checkpoint as pytorch_model.bin (f32, ~0.9 GB; not committed) for
the load-memory benchmark (scripts/bench-load-rss.sh, BENCHMARKS.md "Loading checkpoints").

Usage: python3 scripts/make_t5_base_bin.py OUT_DIR
Needs: pip install torch transformers
"""
import json
import os
import shutil
import sys

import torch
from transformers import T5Config, T5ForConditionalGeneration

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
# t5-base (v1.0) shapes: 12+12 layers, d_model 768, 12 heads, d_ff 3072, vocab 32128.
cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
               feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1)
model = T5ForConditionalGeneration(cfg)
torch.save(model.state_dict(), os.path.join(out, "pytorch_model.bin"))
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg.to_dict(), f, indent=2)
here = os.path.dirname(os.path.abspath(__file__))
shutil.copy(os.path.join(here, "../tests/fixtures/spiece/spiece.model"), out)
