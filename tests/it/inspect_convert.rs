//! `promptd inspect` reports what it sees without loading weights; `promptd convert` rewrites a
//! .bin / spiece.model folder as sharded safetensors + tokenizer.json that answers the same.
use crate::common;

use std::path::Path;

use common::{assert_matches, cases, load_from};
use promptd::cli::convert::{convert, ConvertArgs, StoreDtype};
use promptd::cli::inspect::report;
use promptd::model::weights::{Layout, Weights};
use tch::{Device, Kind};

/// The .bin fixture of `name` with the safetensors fixture's config and tokenizer.
fn bin_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("models").join(name);
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    for entry in std::fs::read_dir(common::fixtures().join("bin").join(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn inspect_reports_both_families() {
    let v10 = report(&common::fixtures().join("models/t5-v1_0-tiny"));
    assert!(v10.can_serve, "{:?}", v10.reason);
    assert!(v10.variant.as_deref().unwrap().contains("v1.0"));
    assert_eq!((v10.encoder_layers, v10.decoder_layers), (Some(2), Some(3)));
    assert_eq!(
        (v10.d_model, v10.num_heads, v10.vocab_size),
        (Some(32), Some(4), Some(136))
    );
    assert_eq!(v10.tokenizer, Some("tokenizer.json"));
    assert_eq!(v10.weights, Some("model.safetensors"));
    let params = v10.parameters.unwrap();
    assert_eq!(v10.weight_memory["f32"], params * 4);
    assert_eq!(v10.weight_memory["bf16"], params * 2);

    let v11 = report(&common::fixtures().join("models/t5-v1_1-tiny"));
    assert!(v11.can_serve, "{:?}", v11.reason);
    assert!(v11.variant.as_deref().unwrap().contains("v1.1"));
    assert_eq!(v11.files.len(), 2);

    // The .bin copy has tied aliases and an extra view; parameters count stored tensors once.
    let bin = bin_model("t5-v1_0-tiny");
    let r = report(bin.path());
    assert!(r.can_serve, "{:?}", r.reason);
    assert_eq!(r.weights, Some("pytorch_model.bin"));
    let shared = 136 * 32;
    assert_eq!(
        r.parameters.unwrap(),
        params + shared,
        "only extra.shared_t adds"
    );
}

#[test]
fn inspect_says_why_it_cannot_serve() {
    let dir = bin_model("t5-v1_0-tiny");
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"t5\"", "\"umt5\"")).unwrap();
    let r = report(dir.path());
    assert!(!r.can_serve);
    assert!(r.reason.unwrap().contains("umt5"));

    std::fs::write(&cfg, text.replace("\"d_model\": 32", "\"d_model\": 64")).unwrap();
    let r = report(dir.path());
    assert!(!r.can_serve);
    assert!(r.reason.unwrap().contains("shape"));

    let empty = tempfile::tempdir().unwrap();
    let r = report(empty.path());
    assert!(!r.can_serve && r.reason.is_some());
}

fn convert_to(src: &Path, out: &Path, max_shard_mb: u64, dtype: StoreDtype) -> usize {
    convert(&ConvertArgs {
        model: src.to_path_buf(),
        out: out.to_path_buf(),
        max_shard_mb,
        dtype,
    })
    .unwrap()
}

#[test]
fn convert_bin_to_sharded_safetensors_answers_the_same() {
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny"] {
        let src = bin_model(name);
        let out = tempfile::tempdir().unwrap();
        // 0 MB: every tensor in a shard of its own.
        let files = convert_to(src.path(), out.path(), 0, StoreDtype::Keep);
        assert!(files > 10);
        let a = Weights::open(src.path(), Device::Cpu, Kind::Float).unwrap();
        let b = Weights::open(out.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(b.layout(), Layout::ShardedSafetensors);
        for (tensor, _) in b.tensors() {
            assert!(
                a.read_raw(tensor)
                    .unwrap()
                    .equal(&b.read_raw(tensor).unwrap()),
                "{tensor}"
            );
        }
        assert!(
            !b.contains("encoder.embed_tokens.weight"),
            "tied aliases are dropped"
        );
        let mut loaded = load_from(out.path(), name);
        for case in cases(name).iter().take(6) {
            let got = loaded.run(&[case]);
            assert_matches(case, &got[0], &format!("{name} converted"));
        }
    }
}

#[test]
fn convert_to_one_bf16_file() {
    let src = common::fixtures().join("models/t5-v1_1-tiny");
    let out = tempfile::tempdir().unwrap();
    assert_eq!(convert_to(&src, out.path(), 2000, StoreDtype::Bf16), 1);
    let w = Weights::open(out.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(w.layout(), Layout::Safetensors);
    assert!(w.tensors().all(|(_, i)| i.kind == Kind::BFloat16));
    assert!(report(out.path()).can_serve);
    // bf16 safetensors load (as f32 here) and run.
    let case = &cases("t5-v1_1-tiny")[0];
    let mut loaded = load_from(out.path(), "t5-v1_1-tiny");
    assert_eq!(loaded.run(&[case]).len(), 1);
    let f16 = tempfile::tempdir().unwrap();
    convert_to(&src, f16.path(), 2000, StoreDtype::F16);
    let mut loaded = load_from(f16.path(), "t5-v1_1-tiny");
    assert_eq!(loaded.run(&[case]).len(), 1);
    assert!(convert(&ConvertArgs {
        model: out.path().to_path_buf(),
        out: out.path().to_path_buf(),
        max_shard_mb: 1,
        dtype: StoreDtype::Keep,
    })
    .is_err());
}

#[test]
fn the_commands_run() {
    let bin = env!("CARGO_BIN_EXE_promptd");
    let src = bin_model("t5-v1_1-tiny");
    let out = std::process::Command::new(bin)
        .args(["inspect", "--json"])
        .arg(src.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["weights"], "pytorch_model.bin.index.json");
    assert_eq!(json["can_serve"], true);

    let dst = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(bin)
        .arg("convert")
        .arg(src.path())
        .arg("--out")
        .arg(dst.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dst.path().join("model.safetensors").is_file());
    assert!(dst.path().join("tokenizer.json").is_file());

    let bad = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .arg("inspect")
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("can serve:    no"));
}

#[test]
fn inspect_reads_every_adapter_kind_and_says_what_is_not_served() {
    use promptd::cli::inspect_adapter::report as adapter_report;
    let adapters = common::fixtures().join("adapters/t5-v1_1-tiny");
    let model = common::fixtures().join("models/t5-v1_1-tiny");
    let other = common::fixtures().join("models/t5-v1_0-tiny");
    let r = adapter_report(&adapters.join("lora-all"), Some(&model));
    assert!(r.can_serve, "{:?}", r.reason);
    assert_eq!((r.kind, r.rank), (Some("lora"), Some(2)));
    assert_eq!(r.modules, ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]);
    let r = adapter_report(&adapters.join("prefix"), Some(&model));
    assert_eq!(r.kind, Some("prefix"));
    assert!(
        r.notes[0].contains("only the decoder's self-attention"),
        "{:?}",
        r.notes
    );
    let r = adapter_report(&adapters.join("multitask"), None);
    assert_eq!(
        (r.kind, r.tasks, r.prompt_length),
        (Some("prompt"), 3, Some(4))
    );
    assert!(
        r.notes.iter().any(|n| n.contains("decoder half")),
        "{:?}",
        r.notes
    );
    let r = adapter_report(
        &common::fixtures().join("prompts/t5-v1_1-tiny/task00"),
        Some(&model),
    );
    assert!(r.notes[0].contains("decoder half"), "{:?}", r.notes);
    // Another model's shapes: refused, with the layer named.
    let r = adapter_report(&adapters.join("lora-qv"), Some(&other));
    assert!(!r.can_serve);
    assert!(r.reason.unwrap().contains("SelfAttention.q"));
}
