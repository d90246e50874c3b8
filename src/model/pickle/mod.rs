//! The pickle of a `torch.save` state dict (`data.pkl`), read by a stack machine that knows only
//! what a state dict holds. Nothing is ever imported or called: a global outside the allow-list
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor[_v2]`, `_rebuild_parameter`, the
//! `torch.*Storage` types) is an error naming it, so `os.system`, `builtins.eval` and friends
//! never get past the opcode that names them.
//!
//! Why not a crate: serde-pickle resolves a closed set of builtins and has no persistent-load
//! (`BINPERSID`) hook, which is how every tensor's storage is referenced; candle's reader lives
//! inside candle-core. This is the same approach (an allow-listed subset of the opcodes torch
//! writes, protocol 2 and up) at about the size of the subset.
mod error;
mod machine;
mod value;

pub use error::PickleError;
use machine::Machine;
use value::Value;
pub use value::{StorageRef, TensorRef};

/// Reads a state dict pickle: every `name → tensor` entry, in file order; entries whose value
/// is not a tensor are skipped.
pub fn read_state_dict(data: &[u8]) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let (top, _) = Machine::new(data, 0).execute()?;
    tensors_of(top, data.len())
}

fn tensors_of(top: Value, at: usize) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let Value::Dict(items, _) = top else {
        return Err(PickleError::Malformed(
            at,
            "the pickle is not a dict".into(),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
            out.push((name.to_string(), (*t).clone()));
        }
    }
    Ok(out)
}

/// How the legacy format's file starts: the pickled magic number 0x1950a86a20f9469cfc6c.
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// A legacy (pre-1.6, non-zip) `torch.save` file's pickles.
#[derive(Debug)]
pub struct Legacy {
    /// The state dict's tensors.
    pub tensors: Vec<(String, TensorRef)>,
    /// Storage keys in the order their bytes follow.
    pub keys: Vec<String>,
    /// Where the first storage (an i64 element count, then the bytes) starts.
    pub data_start: usize,
}

/// Reads the pickles of a legacy file: magic number, protocol version, system info (must be
/// little-endian), the state dict, the list of storage keys.
pub fn read_legacy(file: &[u8]) -> Result<Legacy, PickleError> {
    if !file.starts_with(LEGACY_MAGIC) {
        return Err(PickleError::Malformed(
            0,
            "no legacy torch.save magic number".into(),
        ));
    }
    let (version, pos) = Machine::new(file, LEGACY_MAGIC.len()).execute()?;
    if !matches!(version, Value::Int(1001)) {
        return Err(PickleError::Malformed(
            pos,
            "unknown legacy protocol version".into(),
        ));
    }
    let (info, pos) = Machine::new(file, pos).execute()?;
    let little = match &info {
        Value::Dict(items, _) => items.iter().any(|(k, v)| {
            matches!((k, v), (Value::Str(k), Value::Bool(true)) if &**k == "little_endian")
        }),
        _ => false,
    };
    if !little {
        return Err(PickleError::Malformed(
            pos,
            "not a little-endian checkpoint".into(),
        ));
    }
    let (top, pos) = Machine::new(file, pos).execute()?;
    let tensors = tensors_of(top, pos)?;
    let (keys, data_start) = Machine::new(file, pos).execute()?;
    let Value::List(keys, _) = keys else {
        return Err(PickleError::Malformed(
            data_start,
            "storage keys are not a list".into(),
        ));
    };
    let keys = keys
        .into_iter()
        .map(|k| match k {
            Value::Str(k) => Ok(k.to_string()),
            _ => Err(PickleError::Malformed(
                data_start,
                "a storage key is not a string".into(),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(Legacy {
        tensors,
        keys,
        data_start,
    })
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    /// `{'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 6), 0, (2, 3), (3, 1), False, OrderedDict())}`
    /// as protocol 2 writes it.
    fn state_dict_pickle() -> Vec<u8> {
        let mut p =
            b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02(("
                .to_vec();
        p.extend_from_slice(
            b"X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000",
        );
        p.extend_from_slice(
            b"X\x03\x00\x00\x00cpuK\x06tq\x05QK\x00K\x02K\x03\x86K\x03K\x01\x86\x89",
        );
        p.extend_from_slice(b"ccollections\nOrderedDict\n)Rq\x06tq\x07Rq\x08s.");
        p
    }

    #[test]
    fn reads_a_state_dict() {
        let sd = read_state_dict(&state_dict_pickle()).unwrap();
        assert_eq!(sd.len(), 1);
        let (name, t) = &sd[0];
        assert_eq!(name, "w");
        assert_eq!(t.size, vec![2, 3]);
        assert_eq!(t.stride, vec![3, 1]);
        assert_eq!(
            t.storage,
            StorageRef {
                key: "0".into(),
                kind: Kind::Float,
                numel: 6
            }
        );
    }

    #[test]
    fn refuses_forbidden_globals() {
        // pickle.dumps of os.system('touch x') at protocol 2, and builtins.eval via STACK_GLOBAL.
        let os_system =
            b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00touch xq\x01\x85q\x02Rq\x03.";
        let err = read_state_dict(os_system).unwrap_err().to_string();
        assert!(err.contains("posix.system"), "{err}");
        let eval = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.";
        let err = read_state_dict(eval).unwrap_err().to_string();
        assert!(err.contains("builtins.eval"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let p = state_dict_pickle();
        for cut in 0..p.len() {
            assert!(read_state_dict(&p[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        assert!(read_state_dict(&p).is_err());
    }

    #[test]
    fn repeated_copies_of_a_big_list_are_refused() {
        // A list of 10,000 Nones, then 100,000 DUPs or GETs: 10^9 items if each copy were made.
        for op in [&b"2"[..], b"h\x00"] {
            let mut p = b"\x80\x02](".to_vec();
            p.extend(std::iter::repeat_n(b'N', 10_000));
            p.extend_from_slice(b"eq\x00");
            for _ in 0..100_000 {
                p.extend_from_slice(op);
            }
            p.push(b'.');
            let err = read_state_dict(&p).unwrap_err().to_string();
            assert!(err.contains("copies"), "{err}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let base = state_dict_pickle();
        for _ in 0..20_000 {
            let mut p = base.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % p.len();
                p[i] = (seed >> 32) as u8;
            }
            let _ = read_state_dict(&p);
        }
    }
}
