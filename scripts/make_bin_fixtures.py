#!/usr/bin/env python3
"""Generate the pytorch_model.bin fixtures under tests/fixtures/bin/ (committed; tests never run this).

Reads the committed safetensors fixture models (tests/fixtures/models, from make_fixtures.py; not
regenerated here) and writes the same tensors with torch.save:

  t5-v1_0-tiny/pytorch_model.bin                 single file; the tied embeddings share one
                                                 storage, plus a transposed view `extra.shared_t`
  t5-v1_1-tiny/pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json  sharded
  mt5-tiny/config.json                           t5-v1_1-tiny's config as model_type mt5, after
                                                 checking that transformers' MT5ForConditionalGeneration
                                                 gives the same logits and greedy tokens as T5's
                                                 on those weights (so the v1.1 parity cases hold)
  small/*.bin                                    tiny archives: valid ones (protocol 2 and 4, a
                                                 bf16/f16 pair) and hostile ones (os.system and
                                                 builtins.eval payloads, storage shorter than the
                                                 shape, absurd sizes, legacy format, compressed
                                                 entries, no data.pkl)

The tests copy config.json / tokenizer.json from tests/fixtures/models/<name>.
The os.system payload would `touch /tmp/promptd-bin-fixture-pwned`; tests assert it never appears.

Usage: python3 scripts/make_bin_fixtures.py [--out tests/fixtures/bin]
Needs: pip install torch safetensors
"""
import argparse
import io
import json
import os
import pickle
import shutil
import struct
import zipfile

import torch
from safetensors.torch import load_file

MODELS = "tests/fixtures/models"
MARKER = "/tmp/promptd-bin-fixture-pwned"


class Pwn:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch %s')" % MARKER,))


def load_dir(name):
    d = os.path.join(MODELS, name)
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return load_file(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for s in shards:
        out.update(load_file(os.path.join(d, s)))
    return out


def write_single(out):
    state = load_dir("t5-v1_0-tiny")
    shared = state["shared.weight"]
    # As a tied model's state_dict() holds them: several names, one storage.
    state["encoder.embed_tokens.weight"] = shared
    state["decoder.embed_tokens.weight"] = shared
    state["extra.shared_t"] = shared.t()
    d = os.path.join(out, "t5-v1_0-tiny")
    os.makedirs(d, exist_ok=True)
    torch.save(state, os.path.join(d, "pytorch_model.bin"))


def write_sharded(out):
    state = load_dir("t5-v1_1-tiny")
    names = sorted(state)
    half = len(names) // 2
    d = os.path.join(out, "t5-v1_1-tiny")
    os.makedirs(d, exist_ok=True)
    weight_map = {}
    for i, part in enumerate([names[:half], names[half:]]):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part}, os.path.join(d, fname))
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_mt5(out):
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration

    src = os.path.join(MODELS, "t5-v1_1-tiny")
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    state = load_dir("t5-v1_1-tiny")
    t5 = T5ForConditionalGeneration(T5Config(**cfg)).eval()
    t5.load_state_dict(state, strict=False)
    mcfg = dict(cfg, model_type="mt5", architectures=["MT5ForConditionalGeneration"])
    mt5 = MT5ForConditionalGeneration(MT5Config(**mcfg)).eval()
    mt5.load_state_dict(state, strict=False)
    torch.manual_seed(0)
    ids = torch.randint(3, cfg["vocab_size"] - 10, (4, 17))
    with torch.no_grad():
        dec = torch.zeros((4, 1), dtype=torch.long)
        a = t5(input_ids=ids, decoder_input_ids=dec).logits
        b = mt5(input_ids=ids, decoder_input_ids=dec).logits
        assert torch.equal(a, b), "MT5 and T5 differ on the same weights"
        ga = t5.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
        gb = mt5.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
        assert torch.equal(ga, gb)
    d = os.path.join(out, "mt5-tiny")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(mcfg, f, indent=2)


def archive(path, pkl, storages, compress=False, top="archive"):
    """A torch.save-shaped zip written by hand, for pickles torch would not write."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    entries = {f"{top}/data.pkl": pkl, f"{top}/byteorder": b"little"}
    entries.update({f"{top}/data/{key}": data for key, data in storages.items()})
    entries[f"{top}/version"] = b"3\n"
    write_zip(path, entries, method)


def write_zip(path, entries, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            # A fixed timestamp keeps the committed files reproducible.
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=method)


def rebuild_pickle(shape, stride, numel, offset=0, storage="FloatStorage"):
    """Protocol-2 pickle of {'w': _rebuild_tensor_v2(storage '0', offset, shape, stride, ...)}."""

    class Storage:
        pass

    class Rebuilt:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (Storage(), offset, tuple(shape), tuple(stride), False, _OrderedDict()))

    class _OrderedDict:
        def __reduce__(self):
            import collections
            return (collections.OrderedDict, ())

    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    storage_type = getattr(torch, storage)
    p.persistent_id = lambda obj: ("storage", storage_type, "0", "cpu", numel) if isinstance(obj, Storage) else None
    p.dump({"w": Rebuilt()})
    return buf.getvalue()


def write_small(out):
    d = os.path.join(out, "small")
    os.makedirs(d, exist_ok=True)
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"w": w, "b": torch.ones(4)}, os.path.join(d, "ok_proto2.bin"))
    torch.save({"w": w, "b": torch.ones(4)}, os.path.join(d, "ok_proto4.bin"), pickle_protocol=4)
    torch.save({"w": w.to(torch.bfloat16), "h": w.to(torch.float16)}, os.path.join(d, "ok_half.bin"))
    # A Parameter (torch._utils._rebuild_parameter) and an OrderedDict carrying _metadata.
    m = torch.nn.Linear(4, 3)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.zero_()
    torch.save(m.state_dict(), os.path.join(d, "ok_module.bin"))
    torch.save({"p": torch.nn.Parameter(w)}, os.path.join(d, "ok_parameter.bin"))

    torch.save({"w": w, "evil": Pwn()}, os.path.join(d, "os_system.bin"))
    torch.save({"evil": Eval()}, os.path.join(d, "builtins_eval.bin"), pickle_protocol=4)
    data = struct.pack("<8f", *range(8))
    archive(os.path.join(d, "short_storage.bin"), rebuild_pickle((4, 4), (4, 1), 8), {"0": data})
    archive(os.path.join(d, "storage_size_lies.bin"), rebuild_pickle((2, 4), (4, 1), 16), {"0": data})
    archive(os.path.join(d, "absurd_shape.bin"), rebuild_pickle((1 << 40, 1 << 40), (1 << 40, 1), 8), {"0": data})
    archive(os.path.join(d, "absurd_storage.bin"), rebuild_pickle((2, 4), (4, 1), 1 << 61), {"0": data})
    archive(os.path.join(d, "bad_offset.bin"), rebuild_pickle((2, 4), (4, 1), 8, offset=1), {"0": data})
    archive(os.path.join(d, "compressed.bin"), rebuild_pickle((2, 4), (4, 1), 8), {"0": data}, compress=True)
    write_zip(os.path.join(d, "no_pickle.bin"), {"archive/data/0": data})
    torch.save({"w": w}, os.path.join(d, "legacy.bin"), _use_new_zipfile_serialization=False)
    # Legacy format with several storages, dtypes, an alias and a transposed view.
    torch.save({"w": w, "h": w.half(), "t": w.t(), "alias": w, "b": w.to(torch.bfloat16)},
               os.path.join(d, "legacy_multi.bin"), _use_new_zipfile_serialization=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/bin")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    write_single(args.out)
    write_sharded(args.out)
    write_mt5(args.out)
    write_small(args.out)
    assert not os.path.exists(MARKER)


if __name__ == "__main__":
    main()
