//! Raw tensor bytes as the Open Inference Protocol carries them: the HTTP binary tensor data
//! extension and gRPC's `raw_input_contents` / `raw_output_contents` share one layout. A BYTES
//! tensor is its elements in row-major order, each a little-endian `u32` length and the bytes;
//! numeric tensors are their elements little-endian, back to back.

/// Decodes a BYTES tensor's raw bytes into UTF-8 strings; errors say what is wrong and where.
pub fn decode_bytes(raw: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(format!(
                "element {} has a truncated length prefix ({} of 4 bytes)",
                out.len(),
                rest.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(format!(
                "element {} claims {len} bytes but only {} remain",
                out.len(),
                tail.len()
            ));
        }
        let (text, tail) = tail.split_at(len);
        let text = std::str::from_utf8(text)
            .map_err(|e| format!("element {} is not UTF-8 text: {e}", out.len()))?;
        out.push(text.to_owned());
        rest = tail;
    }
    Ok(out)
}

/// Encodes strings as a BYTES tensor's raw bytes.
pub fn encode_bytes<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        // Texts come from the tokenizer's decoder, far below 4 GiB.
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item.as_bytes());
    }
    out
}

/// Encodes FP64 elements as raw bytes.
pub fn encode_f64(items: impl IntoIterator<Item = f64>) -> Vec<u8> {
    items.into_iter().flat_map(f64::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let items = ["", "a", "héllo wörld", "x".repeat(300).leak()];
        let raw = encode_bytes(items.iter().copied());
        assert_eq!(raw.len(), 4 * 4 + 1 + "héllo wörld".len() + 300);
        assert_eq!(decode_bytes(&raw).unwrap(), items);
        assert_eq!(decode_bytes(&[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn malformed_bytes_are_named() {
        let raw = encode_bytes(["ab"]);
        let e = decode_bytes(&raw[..3]).unwrap_err();
        assert!(e.contains("truncated length prefix"), "{e}");
        let e = decode_bytes(&raw[..5]).unwrap_err();
        assert!(e.contains("claims 2 bytes but only 1 remain"), "{e}");
        let e = decode_bytes(&[1, 0, 0, 0, 0xff]).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn f64_is_little_endian() {
        assert_eq!(encode_f64([1.0]), 1.0f64.to_le_bytes().to_vec());
    }
}
