//! pytorch_model.bin checkpoints (single and sharded) load to exactly the tensors of the
//! safetensors fixtures and answer like transformers + PEFT; hostile .bin files are refused
//! without running anything (fixtures: scripts/make_bin_fixtures.py).
use crate::common;

use std::path::{Path, PathBuf};

use common::{assert_matches, cases, load_from};
use promptd::model::weights::{Layout, Weights};
use promptd::model::{ModelError, ModelOptions, T5Model};
use tch::{Device, Kind, Tensor};

const MARKER: &str = "/tmp/promptd-bin-fixture-pwned";

fn bin_fixtures() -> PathBuf {
    common::fixtures().join("bin")
}

/// A model folder: the safetensors fixture's config and tokenizer plus the .bin files.
fn bin_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("models").join(name);
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    for entry in std::fs::read_dir(bin_fixtures().join(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn open(dir: &Path) -> Weights {
    Weights::open(dir, Device::Cpu, Kind::Float).unwrap()
}

fn equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && a.equal(b)
}

#[test]
fn bin_tensors_equal_safetensors_tensors() {
    for (name, layout) in [
        ("t5-v1_0-tiny", Layout::Bin),
        ("t5-v1_1-tiny", Layout::ShardedBin),
    ] {
        let dir = bin_model(name);
        let bin = open(dir.path());
        assert_eq!(bin.layout(), layout);
        let st = open(&common::fixtures().join("models").join(name));
        let mut n = 0;
        for (tensor, info) in st.tensors() {
            let a = st.read_raw(tensor).unwrap();
            let b = bin.read_raw(tensor).unwrap();
            assert!(equal(&a, &b), "{name} {tensor}");
            assert_eq!(bin.get(tensor, &info.shape).unwrap().kind(), Kind::Float);
            n += 1;
        }
        assert!(n > 10);
        if name == "t5-v1_0-tiny" {
            // A transposed view of the shared storage comes out as the transpose.
            let shared = bin.read_raw("shared.weight").unwrap();
            let t = bin.read_raw("extra.shared_t").unwrap();
            assert!(equal(&shared.tr().contiguous(), &t));
            // Tied names are recognised as one stored tensor (the model shares it, no copy).
            assert!(bin.is_alias("encoder.embed_tokens.weight", "shared.weight"));
            assert!(!bin.is_alias("extra.shared_t", "shared.weight"));
            assert!(!bin.is_alias("lm_head.weight", "shared.weight"));
        }
    }
}

#[test]
fn bin_models_match_transformers() {
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny"] {
        let dir = bin_model(name);
        let mut loaded = load_from(dir.path(), name);
        for case in cases(name).iter().take(12) {
            let out = loaded.run(&[case]);
            assert_matches(case, &out[0], &format!("{name} from .bin"));
        }
    }
}

fn small(file: &str) -> Result<Weights, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        bin_fixtures().join("small").join(file),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    Weights::open(dir.path(), Device::Cpu, Kind::Float)
}

#[test]
fn small_valid_archives_load() {
    let w_expected = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
    for file in [
        "ok_proto2.bin",
        "ok_proto4.bin",
        "ok_module.bin",
        "ok_parameter.bin",
    ] {
        let w = small(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let name = match file {
            "ok_module.bin" => "weight",
            "ok_parameter.bin" => "p",
            _ => "w",
        };
        assert!(equal(&w.get(name, &[3, 4]).unwrap(), &w_expected), "{file}");
    }
    // The legacy (pre-1.6, non-zip) format.
    let legacy = small("legacy.bin").unwrap();
    assert!(equal(&legacy.get("w", &[3, 4]).unwrap(), &w_expected));
    let multi = small("legacy_multi.bin").unwrap();
    for name in ["w", "alias", "h", "b"] {
        assert!(
            equal(&multi.get(name, &[3, 4]).unwrap(), &w_expected),
            "{name}"
        );
    }
    assert!(equal(
        &multi.get("t", &[4, 3]).unwrap(),
        &w_expected.tr().contiguous()
    ));
    assert!(multi.is_alias("w", "alias"));
    let bytes = std::fs::read(bin_fixtures().join("small/legacy_multi.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in 0..bytes.len() {
        std::fs::write(dir.path().join("pytorch_model.bin"), &bytes[..cut]).unwrap();
        assert!(
            Weights::open(dir.path(), Device::Cpu, Kind::Float).is_err(),
            "cut {cut}"
        );
    }
    let half = small("ok_half.bin").unwrap();
    assert_eq!(half.read_raw("w").unwrap().kind(), Kind::BFloat16);
    assert_eq!(half.read_raw("h").unwrap().kind(), Kind::Half);
    assert!(equal(&half.get("h", &[3, 4]).unwrap(), &w_expected));
    assert!(equal(&half.get("w", &[3, 4]).unwrap(), &w_expected));
}

#[test]
fn hostile_archives_are_refused_without_running_anything() {
    let _ = std::fs::remove_file(MARKER);
    for (file, says) in [
        ("os_system.bin", "posix.system"),
        ("builtins_eval.bin", "builtins.eval"),
        ("short_storage.bin", "needs 16 elements"),
        ("storage_size_lies.bin", "declares 16 elements"),
        ("absurd_shape.bin", "overflows"),
        ("absurd_storage.bin", "declares"),
        ("bad_offset.bin", "needs 9 elements"),
        ("compressed.bin", "compressed"),
        ("no_pickle.bin", "data.pkl"),
    ] {
        let err = match small(file) {
            Ok(_) => panic!("{file} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "{file}: {err}");
    }
    assert!(!Path::new(MARKER).exists(), "a payload ran");
}

#[test]
fn truncated_archives_are_errors() {
    let bytes = std::fs::read(bin_fixtures().join("t5-v1_0-tiny/pytorch_model.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pytorch_model.bin");
    let step = bytes.len() / 97;
    for cut in (0..bytes.len())
        .step_by(step)
        .chain([bytes.len() - 1, bytes.len() - 22])
    {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(
            Weights::open(dir.path(), Device::Cpu, Kind::Float).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_model_with_a_hostile_bin_fails_to_load() {
    let dir = bin_model("t5-v1_0-tiny");
    std::fs::copy(
        bin_fixtures().join("small/os_system.bin"),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let opts = ModelOptions {
        device: Device::Cpu,
        kind: Kind::Float,
    };
    let err = T5Model::load(dir.path(), opts).err().unwrap().to_string();
    assert!(err.contains("posix.system"), "{err}");
}

#[test]
fn mutated_archives_never_panic() {
    let base = std::fs::read(bin_fixtures().join("small/ok_proto4.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pytorch_model.bin");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        let mut bytes = base.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % bytes.len();
            bytes[i] = (seed >> 40) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(w) = Weights::open(dir.path(), Device::Cpu, Kind::Float) {
            let names: Vec<String> = w.tensors().map(|(n, _)| n.to_string()).collect();
            for n in names {
                let _ = w.read_raw(&n);
            }
        }
    }
}
