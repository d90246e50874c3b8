//! Prompt files: formats, PEFT adapters, validation errors, and hostile bytes (property tests).
use crate::common;

use common::{f32_bytes, npy_bytes, st_bytes};
use promptd::prompts::{load_prompt_dir, parse_tensor_file, Prompt, PromptLimits};
use proptest::prelude::*;
use safetensors::tensor::Dtype;

const D: usize = 8;

fn values(rows: usize) -> Vec<f32> {
    (0..rows * D).map(|i| (i as f32 * 0.37).sin()).collect()
}

fn limits() -> PromptLimits {
    PromptLimits {
        max_rows: 100,
        max_file_bytes: 1 << 20,
        ..PromptLimits::default()
    }
}

#[test]
fn all_formats_decode_to_the_same_rows() {
    let v = values(5);
    let bf16: Vec<f32> = v
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect();
    let f16: Vec<f32> = v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect();
    let cases: Vec<(Vec<u8>, &Vec<f32>)> = vec![
        (
            st_bytes(&[("p", Dtype::F32, vec![5, D], f32_bytes(&v))]),
            &v,
        ),
        (
            st_bytes(&[
                ("prompt_embeddings", Dtype::F32, vec![5, D], f32_bytes(&v)),
                ("other", Dtype::F32, vec![1], f32_bytes(&[1.0])),
            ]),
            &v,
        ),
        (
            st_bytes(&[(
                "p",
                Dtype::BF16,
                vec![5, D],
                v.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            )]),
            &bf16,
        ),
        (
            st_bytes(&[(
                "p",
                Dtype::F16,
                vec![5, D],
                v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            )]),
            &f16,
        ),
        (npy_bytes("<f4", "(5, 8)", &f32_bytes(&v)), &v),
        (
            npy_bytes(
                "<f2",
                "(5, 8)",
                &v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            &f16,
        ),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let p = Prompt::from_tensor_file(&bytes, D, &limits())
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(p.encoder.rows, 5, "case {i}");
        assert_eq!(&p.encoder.values, want, "case {i}");
        assert!(p.decoder.is_none());
    }
}

#[test]
fn bad_prompts_are_rejected_with_reasons() {
    let nan = {
        let mut v = values(2);
        v[11] = f32::NAN;
        v
    };
    let inf = {
        let mut v = values(2);
        v[3] = f32::INFINITY;
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong width",
            st_bytes(&[(
                "p",
                Dtype::F32,
                vec![2, D + 1],
                f32_bytes(&(0..2 * (D + 1)).map(|i| i as f32).collect::<Vec<_>>()),
            )]),
            "d_model 8",
        ),
        (
            "NaN",
            st_bytes(&[("p", Dtype::F32, vec![2, D], f32_bytes(&nan))]),
            "row 1, column 3 is NaN",
        ),
        (
            "Inf",
            npy_bytes("<f4", "(2, 8)", &f32_bytes(&inf)),
            "finite",
        ),
        (
            "zero rows",
            st_bytes(&[("p", Dtype::F32, vec![0, D], vec![])]),
            "0 rows",
        ),
        (
            "too many rows",
            st_bytes(&[("p", Dtype::F32, vec![101, D], f32_bytes(&values(101)))]),
            "limit is 100",
        ),
        (
            "1-D",
            st_bytes(&[("p", Dtype::F32, vec![D], f32_bytes(&values(1)))]),
            "2-D",
        ),
        (
            "3-D",
            npy_bytes("<f4", "(1, 1, 8)", &f32_bytes(&values(1))),
            "2-D",
        ),
        (
            "int dtype",
            st_bytes(&[("p", Dtype::I32, vec![1, D], vec![0; 4 * D])]),
            "F32, F16 or BF16",
        ),
        (
            "f64 npy",
            npy_bytes("<f8", "(1, 8)", &[0; 64]),
            "float32 or float16",
        ),
        (
            "two tensors",
            st_bytes(&[
                ("a", Dtype::F32, vec![1, D], f32_bytes(&values(1))),
                ("b", Dtype::F32, vec![1, D], f32_bytes(&values(1))),
            ]),
            "expected one tensor",
        ),
        ("empty", vec![], "empty"),
        (
            "not a tensor",
            b"hello, this is text and not a tensor file".to_vec(),
            "not a prompt tensor file",
        ),
        (
            "huge header length",
            [&u64::MAX.to_le_bytes()[..], b"{}"].concat(),
            "safetensors",
        ),
        (
            "truncated",
            st_bytes(&[("p", Dtype::F32, vec![2, D], f32_bytes(&values(2)))])[..60].to_vec(),
            "safetensors",
        ),
        ("too big", vec![b'x'; (1 << 20) + 1], "limit is 1048576"),
    ];
    for (name, bytes, needle) in cases {
        let err = Prompt::from_tensor_file(&bytes, D, &limits())
            .expect_err(name)
            .to_string();
        assert!(
            err.contains(needle),
            "{name}: {err:?} should mention {needle:?}"
        );
    }
}

fn adapter_config(p: usize, submodules: usize) -> String {
    format!(
        r#"{{"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": {p},
            "num_transformer_submodules": {submodules}, "token_dim": {D}, "prompt_tuning_init": "RANDOM"}}"#
    )
}

#[test]
fn peft_adapter_splits_encoder_and_decoder_rows() {
    let v = values(6);
    let weights = st_bytes(&[("prompt_embeddings", Dtype::F32, vec![6, D], f32_bytes(&v))]);
    let p = Prompt::from_peft(adapter_config(3, 2).as_bytes(), &weights, D, &limits()).unwrap();
    assert_eq!(p.encoder.rows, 3);
    assert_eq!(p.encoder.values, v[..3 * D]);
    assert_eq!(p.decoder.as_ref().unwrap().values, v[3 * D..]);
    // The same file alone is a bare tensor: all rows feed the encoder.
    assert_eq!(
        Prompt::from_tensor_file(&weights, D, &limits())
            .unwrap()
            .encoder
            .rows,
        6
    );
    let single =
        Prompt::from_peft(adapter_config(6, 1).as_bytes(), &weights, D, &limits()).unwrap();
    assert_eq!((single.encoder.rows, single.decoder.is_none()), (6, true));

    let bad: Vec<(String, &str)> = vec![
        (adapter_config(4, 2), "implies 4 x 2 = 8"),
        (adapter_config(3, 3), "must be 1 or 2"),
        (adapter_config(0, 2), "at least 1"),
        (
            adapter_config(3, 2).replace("PROMPT_TUNING", "LOHA"),
            "not supported",
        ),
        (
            adapter_config(3, 2).replace("PROMPT_TUNING", "LORA"),
            "r (the LoRA rank) is missing",
        ),
        (
            adapter_config(3, 2).replace(&format!("\"token_dim\": {D}"), "\"token_dim\": 4"),
            "token_dim is 4",
        ),
        ("{not json".into(), "adapter_config.json"),
    ];
    for (cfg, needle) in bad {
        let err = Prompt::from_peft(cfg.as_bytes(), &weights, D, &limits())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}

#[test]
fn peft_saved_adapters_load_as_is() {
    // Written by PEFT's save_pretrained in scripts/make_fixtures.py.
    for model in common::model_names() {
        let dir = common::fixtures().join("prompts").join(&model);
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                common::fixtures()
                    .join("models")
                    .join(&model)
                    .join("config.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let d = cfg["d_model"].as_u64().unwrap() as usize;
        let loaded = load_prompt_dir(&dir, d, &PromptLimits::default()).unwrap();
        assert!(loaded.errors.is_empty());
        let peft_dirs = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        let with_decoder = loaded
            .prompts
            .values()
            .filter(|p| p.decoder.is_some())
            .count();
        assert_eq!(
            with_decoder, peft_dirs,
            "every PEFT seq2seq adapter keeps its decoder rows"
        );
        assert!(loaded.prompts.values().any(|p| p.encoder.rows == 100));
        assert!(loaded.prompts.values().any(|p| p.encoder.rows == 1));
    }
}

#[test]
fn prompt_dir_reports_bad_entries_and_keeps_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = st_bytes(&[("p", Dtype::F32, vec![2, D], f32_bytes(&values(2)))]);
    std::fs::write(dir.path().join("good.safetensors"), &good).unwrap();
    // A task defined twice: the most recently modified source wins (the folder rule).
    std::fs::write(dir.path().join("dup.safetensors"), &good).unwrap();
    std::fs::write(
        dir.path().join("dup.npy"),
        npy_bytes("<f4", "(3, 8)", &f32_bytes(&values(3))),
    )
    .unwrap();
    let older = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("dup.safetensors"))
        .unwrap()
        .set_modified(older)
        .unwrap();
    std::fs::write(dir.path().join("broken.npy"), b"\x93NUMPY\x01\x00").unwrap();
    std::fs::write(dir.path().join("-bad-name.npy"), &good).unwrap();
    std::fs::write(dir.path().join(".hidden.safetensors"), b"junk").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let pickled = dir.path().join("pickled");
    std::fs::create_dir(&pickled).unwrap();
    std::fs::write(pickled.join("adapter_config.json"), adapter_config(2, 1)).unwrap();
    std::fs::write(pickled.join("adapter_model.bin"), b"PK").unwrap();
    std::fs::create_dir(dir.path().join("not-an-adapter")).unwrap();
    let loaded = load_prompt_dir(dir.path(), D, &limits()).unwrap();
    let names: Vec<String> = loaded.prompts.keys().map(|t| t.to_string()).collect();
    assert_eq!(names, vec!["dup", "good"]);
    assert_eq!(
        loaded.prompts[&promptd::prompts::TaskName::parse("dup").unwrap()]
            .encoder
            .rows,
        3
    );
    assert_eq!(loaded.errors.len(), 3, "{:?}", loaded.errors);
    let all = format!("{:?}", loaded.errors);
    assert!(all.contains("safe_serialization=True"), "{all}");
}

fn valid_files() -> Vec<Vec<u8>> {
    vec![
        st_bytes(&[(
            "prompt_embeddings",
            Dtype::F32,
            vec![3, D],
            f32_bytes(&values(3)),
        )]),
        st_bytes(&[("p", Dtype::BF16, vec![2, D], vec![0x3f; 2 * D * 2])]),
        npy_bytes("<f4", "(3, 8)", &f32_bytes(&values(3))),
        npy_bytes("<f2", "(2, 8)", &[0x3c; 2 * D * 2]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Prompt::from_tensor_file(&bytes, D, &limits());
        let _ = Prompt::from_peft(&bytes, &bytes, D, &limits());
    }

    #[test]
    fn magic_prefixed_random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), npy in any::<bool>()) {
        let mut bytes = if npy { b"\x93NUMPY\x01\x00".to_vec() } else { 40u64.to_le_bytes().to_vec() };
        bytes.extend(body);
        let _ = parse_tensor_file(&bytes, &limits());
    }

    #[test]
    fn mutated_valid_files_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_files()[which].clone();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(p) = Prompt::from_tensor_file(&bytes, D, &limits()) {
            // Whatever parses is a valid prompt.
            prop_assert!(p.encoder.rows >= 1 && p.encoder.cols == D);
            prop_assert!(p.encoder.values.iter().all(|v| v.is_finite()));
            prop_assert_eq!(p.encoder.values.len(), p.encoder.rows * D);
        }
    }
}
