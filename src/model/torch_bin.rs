//! `pytorch_model.bin` as `torch.save` writes it since PyTorch 1.6: a zip holding
//! `<top>/data.pkl` (the state dict's pickle, read by the allow-listed [`super::pickle`]) and one
//! `<top>/data/<key>` entry per storage, stored uncompressed. Entries are located in the
//! memory-mapped file and sliced in place, so no storage is copied until its tensor is read.
//! The legacy format of older PyTorch (pickles followed by the raw storages) is read the same way.
use std::io::Cursor;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::Kind;
use zip::{CompressionMethod, ZipArchive};

use super::pickle::{read_legacy, read_state_dict, TensorRef, LEGACY_MAGIC};

/// Where one tensor's bytes are in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct BinTensor {
    /// Element type.
    pub kind: Kind,
    /// Shape.
    pub shape: Vec<i64>,
    /// Bytes of the file covering the tensor, from its first element to its last.
    pub bytes: Range<usize>,
    /// Strides in elements when the tensor is not laid out row-major contiguous in `bytes`.
    pub stride: Option<Vec<i64>>,
}

/// Every tensor of a `torch.save` zip archive, in pickle order. `file` is the whole file.
pub fn read_archive(file: &[u8]) -> Result<Vec<(String, BinTensor)>, String> {
    if file.starts_with(LEGACY_MAGIC) {
        return read_legacy_file(file);
    }
    if !file.starts_with(b"PK\x03\x04") {
        return Err("not a torch.save file (neither a zip archive nor the legacy format)".into());
    }
    check_entry_count(file)?;
    let entries = zip_entries(file)?;
    let index: std::collections::HashMap<&str, Range<usize>> = entries
        .iter()
        .map(|(n, r)| (n.as_str(), r.clone()))
        .collect();
    let pkl = entries
        .iter()
        .filter(|(name, _)| name == "data.pkl" || name.ends_with("/data.pkl"))
        .collect::<Vec<_>>();
    let [(pkl_name, pkl_range)] = pkl.as_slice() else {
        return Err(format!(
            "expected one data.pkl in the archive, found {}",
            pkl.len()
        ));
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let lookup = |name: &str| index.get(name).cloned();
    if let Some(order) = lookup(&format!("{prefix}byteorder")) {
        if &file[order] != b"little" {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let state = read_state_dict(&file[pkl_range.clone()]).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(state.len());
    for (name, t) in state {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor {name} appears twice"));
        }
        let storage = format!("{prefix}data/{}", t.storage.key);
        let range =
            lookup(&storage).ok_or_else(|| format!("{name}: storage {storage} is missing"))?;
        let tensor = locate(&t, range).map_err(|e| format!("{name}: {e}"))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// The legacy (pre-1.6) format: the pickles, then each storage in key order as an i64 element
/// count and its bytes. Element sizes come from the tensors that use each storage.
fn read_legacy_file(file: &[u8]) -> Result<Vec<(String, BinTensor)>, String> {
    let legacy = read_legacy(file).map_err(|e| format!("legacy torch.save format: {e}"))?;
    let kinds: std::collections::HashMap<&str, Kind> = legacy
        .tensors
        .iter()
        .map(|(_, t)| (t.storage.key.as_str(), t.storage.kind))
        .collect();
    let mut ranges = std::collections::HashMap::new();
    let mut pos = legacy.data_start;
    for key in &legacy.keys {
        let count: [u8; 8] = file
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("storage {key}: the file ends (truncated?)"))?;
        let numel = u64::from_le_bytes(count);
        let kind = kinds
            .get(key.as_str())
            .ok_or_else(|| format!("storage {key} is used by no tensor: its size is unknown"))?;
        let len = numel
            .checked_mul(kind.elt_size_in_bytes() as u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| format!("storage {key}: {numel} elements is absurd"))?;
        let start = pos + 8;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= file.len())
            .ok_or_else(|| format!("storage {key} runs past the end of the file (truncated?)"))?;
        ranges.insert(key.as_str(), start..end);
        pos = end;
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(legacy.tensors.len());
    for (name, t) in &legacy.tensors {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor {name} appears twice"));
        }
        let range = ranges
            .get(t.storage.key.as_str())
            .cloned()
            .ok_or_else(|| format!("{name}: storage {} is missing", t.storage.key))?;
        out.push((
            name.clone(),
            locate(t, range).map_err(|e| format!("{name}: {e}"))?,
        ));
    }
    Ok(out)
}

/// The zip crate reserves memory for as many entries as the end-of-central-directory records
/// claim (bounded only by the file size): refuse a count the file cannot hold (a central
/// directory entry takes 46 bytes at least) before it gets there.
fn check_entry_count(file: &[u8]) -> Result<(), String> {
    let u64_at = |at: usize| -> Option<u64> {
        let b: [u8; 8] = file.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let lowest = file.len().saturating_sub(22 + 65_535);
    let Some(eocd) = (lowest..file.len().saturating_sub(21))
        .rev()
        .find(|&i| file[i..].starts_with(b"PK\x05\x06"))
    else {
        return Err("no zip end-of-central-directory record (truncated?)".into());
    };
    let mut counts = vec![u64::from(u16::from_le_bytes([
        file[eocd + 10],
        file[eocd + 11],
    ]))];
    // Zip64: a locator just before the record; the crate then takes the first zip64 record
    // found searching forward from the offset the locator gives.
    let locator = eocd
        .checked_sub(20)
        .filter(|&l| file[l..].starts_with(b"PK\x06\x07"));
    if let Some(l) = locator {
        let from = u64_at(l + 8)
            .and_then(|r| usize::try_from(r).ok())
            .unwrap_or(usize::MAX);
        let record = (from..l.saturating_sub(55)).find(|&i| file[i..].starts_with(b"PK\x06\x06"));
        if let Some(r) = record {
            counts.extend([u64_at(r + 24), u64_at(r + 32)].into_iter().flatten());
        }
    }
    let max = counts.into_iter().max().unwrap_or(0);
    if max.saturating_mul(46) > file.len() as u64 {
        return Err(format!(
            "the archive claims {max} entries, more than its size can hold"
        ));
    }
    Ok(())
}

/// Name → byte range of every stored entry. Compressed entries get an empty range and are
/// refused when used: torch.save never compresses.
fn zip_entries(file: &[u8]) -> Result<Vec<(String, Range<usize>)>, String> {
    // The zip crate parses untrusted headers; a panic in it must not take the process down.
    catch_unwind(AssertUnwindSafe(|| {
        let mut archive = ZipArchive::new(Cursor::new(file)).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(archive.len());
        for i in 0..archive.len() {
            let entry = archive.by_index_raw(i).map_err(|e| e.to_string())?;
            let name = entry.name().to_string();
            if entry.compression() != CompressionMethod::Stored {
                return Err(format!("{name}: compressed zip entries are not supported"));
            }
            let start = usize::try_from(entry.data_start()).ok();
            let len = usize::try_from(entry.compressed_size()).ok();
            let range = start
                .zip(len)
                .and_then(|(s, l)| Some(s..s.checked_add(l)?))
                .filter(|r| r.end <= file.len())
                .ok_or_else(|| {
                    format!("{name}: entry runs past the end of the file (truncated?)")
                })?;
            out.push((name, range));
        }
        Ok(out)
    }))
    .unwrap_or_else(|_| Err("malformed zip archive".into()))
}

/// Checks a tensor's view against its storage entry and returns the bytes it covers.
fn locate(t: &TensorRef, entry: Range<usize>) -> Result<BinTensor, String> {
    let es = t.storage.kind.elt_size_in_bytes() as u64;
    let entry_len = (entry.end - entry.start) as u64;
    let declared = t.storage.numel.checked_mul(es);
    if declared != Some(entry_len) {
        return Err(format!(
            "storage declares {} elements of {} bytes but holds {entry_len} bytes",
            t.storage.numel, es
        ));
    }
    if t.size.len() != t.stride.len() || t.size.iter().chain(&t.stride).any(|&d| d < 0) {
        return Err(format!("bad size {:?} / stride {:?}", t.size, t.stride));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or("element count overflows")?;
    // Elements from the first to the last one the view touches.
    let extent = if numel == 0 {
        0
    } else {
        t.size
            .iter()
            .zip(&t.stride)
            .try_fold(1u64, |acc, (&d, &s)| {
                acc.checked_add((d as u64 - 1).checked_mul(s as u64)?)
            })
            .ok_or("extent overflows")?
    };
    let end = t.offset.checked_add(extent).ok_or("offset overflows")?;
    if end > t.storage.numel {
        return Err(format!(
            "shape {:?} stride {:?} offset {} needs {end} elements, the storage has {}",
            t.size, t.stride, t.offset, t.storage.numel
        ));
    }
    let start = entry.start + (t.offset * es) as usize;
    let bytes = start..start + (extent * es) as usize;
    let contiguous = extent == numel && is_row_major(&t.size, &t.stride);
    Ok(BinTensor {
        kind: t.storage.kind,
        shape: t.size.clone(),
        bytes,
        stride: (!contiguous).then(|| t.stride.clone()),
    })
}

fn is_row_major(size: &[i64], stride: &[i64]) -> bool {
    let mut expected = 1i64;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pickle::StorageRef;

    fn t(numel: u64, offset: u64, size: &[i64], stride: &[i64]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                kind: Kind::Float,
                numel,
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn views_are_checked_against_storage() {
        let ok = locate(&t(6, 0, &[2, 3], &[3, 1]), 100..124).unwrap();
        assert_eq!((ok.bytes, ok.stride), (100..124, None));
        let transposed = locate(&t(6, 0, &[3, 2], &[1, 3]), 100..124).unwrap();
        assert_eq!(transposed.stride, Some(vec![1, 3]));
        let slice = locate(&t(6, 3, &[3], &[1]), 100..124).unwrap();
        assert_eq!((slice.bytes, slice.stride), (112..124, None));
        for bad in [
            t(6, 0, &[3, 3], &[3, 1]),               // longer than the storage
            t(6, 4, &[3], &[1]),                     // offset pushes it past the end
            t(7, 0, &[2, 3], &[3, 1]),               // storage size disagrees with the entry
            t(u64::MAX, 0, &[2], &[1]),              // absurd storage
            t(6, 0, &[i64::MAX, i64::MAX], &[1, 1]), // absurd shape
            t(6, 0, &[-1], &[1]),
            t(6, 0, &[2, 3], &[1]),
        ] {
            assert!(locate(&bad, 100..124).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn absurd_entry_counts_are_refused_before_the_zip_crate_allocates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bin/small/ok_proto2.bin"
        );
        let file = std::fs::read(path).unwrap();
        check_entry_count(&file).unwrap();
        let z64 = file.windows(4).rposition(|w| w == b"PK\x06\x06").unwrap();
        let eocd = file.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
        for at in [z64 + 24, z64 + 32] {
            let mut bad = file.clone();
            bad[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            assert!(check_entry_count(&bad).unwrap_err().contains("claims"));
            assert!(read_archive(&bad).is_err());
        }
        let mut bad = file.clone();
        bad[eocd + 10..eocd + 12].copy_from_slice(&[0xff, 0xff]);
        assert!(check_entry_count(&bad).is_err());
    }

    #[test]
    fn non_archives_are_refused() {
        assert!(read_archive(b"").is_err());
        let legacy = read_archive(LEGACY_MAGIC).unwrap_err();
        assert!(legacy.contains("legacy"), "{legacy}");
        assert!(read_archive(b"PK\x03\x04garbage").is_err());
        assert!(read_archive(b"\x80\x02}.").is_err());
    }
}
