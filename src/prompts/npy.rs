//! NumPy `.npy` (format versions 1–3) holding a float32/float16 C-order matrix.
use super::error::PromptError;
use super::tensor::{Dtype, RawTensor};

const MAGIC: &[u8] = b"\x93NUMPY";
/// No legitimate prompt needs a bigger header; numpy itself caps it similarly.
const MAX_HEADER: usize = 64 * 1024;

/// Whether `bytes` start like an .npy file.
pub fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Parses an .npy file into a raw tensor (values not yet checked).
pub fn parse(bytes: &[u8]) -> Result<RawTensor, PromptError> {
    let bad = |why: String| PromptError::Format(format!("npy: {why}"));
    if !is_npy(bytes) {
        return Err(bad("missing \\x93NUMPY magic".into()));
    }
    let major = *bytes
        .get(6)
        .ok_or_else(|| bad("truncated before the version".into()))?;
    let (len_size, header_start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let len_bytes = bytes
        .get(8..8 + len_size)
        .ok_or_else(|| bad("truncated header length".into()))?;
    let header_len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    if header_len > MAX_HEADER {
        return Err(bad(format!(
            "header length {header_len} exceeds {MAX_HEADER} bytes"
        )));
    }
    let header_end = header_start + header_len;
    let header = bytes.get(header_start..header_end).ok_or_else(|| {
        bad(format!(
            "header says {header_len} bytes but the file has {}",
            bytes.len().saturating_sub(header_start)
        ))
    })?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let dict = HeaderDict::parse(header).map_err(bad)?;
    let (dtype, big_endian) = match dict.descr.as_str() {
        "<f4" | "=f4" => (Dtype::F32, false),
        ">f4" => (Dtype::F32, true),
        "<f2" | "=f2" | "|f2" => (Dtype::F16, false),
        ">f2" => (Dtype::F16, true),
        other => {
            return Err(bad(format!(
                "dtype {other:?} is not supported: save float32 or float16"
            )))
        }
    };
    if dict.fortran_order {
        return Err(bad(
            "fortran_order arrays are not supported: save a C-order array (np.ascontiguousarray)"
                .into(),
        ));
    }
    let data = &bytes[header_end..];
    RawTensor::from_bytes(dtype, &dict.shape, data, big_endian, "npy")
}

/// The three keys of an .npy header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (5, 512), }`.
struct HeaderDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

impl HeaderDict {
    fn parse(text: &str) -> Result<Self, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        p.skip_ws();
        p.expect(b'{')?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            p.skip_ws();
            if p.eat(b'}') {
                break;
            }
            let key = p.string()?;
            p.skip_ws();
            p.expect(b':')?;
            p.skip_ws();
            match key.as_str() {
                "descr" => descr = Some(p.string()?),
                "fortran_order" => fortran = Some(p.boolean()?),
                "shape" => shape = Some(p.tuple()?),
                other => return Err(format!("unexpected header key {other:?}")),
            }
            p.skip_ws();
            if !p.eat(b',') {
                p.skip_ws();
                p.expect(b'}')?;
                break;
            }
        }
        Ok(Self {
            descr: descr.ok_or("header lacks 'descr'")?,
            fortran_order: fortran.ok_or("header lacks 'fortran_order'")?,
            shape: shape.ok_or("header lacks 'shape'")?,
        })
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "malformed header at byte {}: expected {:?}",
                self.i, c as char
            ))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = *self
            .s
            .get(self.i)
            .ok_or("malformed header: unexpected end")?;
        if quote != b'\'' && quote != b'"' {
            return Err(format!(
                "malformed header at byte {}: expected a string",
                self.i
            ));
        }
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != quote {
            self.i += 1;
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.expect(quote)?;
        Ok(out)
    }
    fn boolean(&mut self) -> Result<bool, String> {
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!(
            "malformed header at byte {}: expected True or False",
            self.i
        ))
    }
    fn tuple(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let dim: u64 = digits
                .parse()
                .map_err(|_| format!("malformed shape at byte {start}"))?;
            dims.push(dim);
            if dims.len() > 8 {
                return Err("shape has too many dimensions".into());
            }
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an .npy v1 file the way numpy writes one.
    pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_f32_and_f16() {
        let vals = [1.0f32, -2.5, 0.25, 3.0, 4.0, 5.0];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse(&npy_bytes("<f4", &[2, 3], &data)).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.values, vals);
        let data16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let t = parse(&npy_bytes("<f2", &[3, 2], &data16)).unwrap();
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.values, vals);
        let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(parse(&npy_bytes(">f4", &[6, 1], &be)).unwrap().values, vals);
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        let data = vec![0u8; 24];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (npy_bytes("<f8", &[3, 1], &data), "float32 or float16"),
            (npy_bytes("<f4", &[2, 3], &data[..20]), "expected 24"),
            (
                npy_bytes("<f4", &[2, 3], &[data.clone(), vec![0; 4]].concat()),
                "expected 24",
            ),
            (npy_bytes("<i4", &[2, 3], &data), "not supported"),
            (b"\x93NUMPY\x01\x00\xff\xff{".to_vec(), "header says"),
            (b"\x93NUMPY\x09\x00".to_vec(), "version 9"),
            (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f".to_vec(), "exceeds"),
        ];
        for (bytes, needle) in cases {
            let err = parse(&bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let mut fortran = npy_bytes("<f4", &[2, 3], &data);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse(&fortran).unwrap_err().to_string().contains("C-order"));
    }
}
