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
use std::collections::HashMap;
use std::rc::Rc;

use tch::Kind;

/// Deepest nesting a state dict needs (dict → rebuild args → shape tuple) with room to spare;
/// bounds recursion when values are dropped or inspected.
const MAX_DEPTH: usize = 32;

/// A pickle that is not a plain state dict, or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The pickle names a global outside the allow-list.
    #[error("refusing to load global {0} (only tensors, storages and ordered dicts are allowed)")]
    Forbidden(String),
    /// An opcode this reader does not implement (none that a state dict needs).
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    /// Malformed: truncated, stack underflow, wrong argument types.
    #[error("malformed pickle at byte {0}: {1}")]
    Malformed(usize, String),
}

/// A storage referenced by a tensor: `data/<key>` in the archive, `numel` elements of `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Archive entry name under `data/`.
    pub key: String,
    /// Element type.
    pub kind: Kind,
    /// Elements in the storage, as the pickle declares.
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage.
    pub storage: StorageRef,
    /// First element, in elements.
    pub offset: u64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Kind),
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Vec<Value>>, usize),
    List(Vec<Value>, usize),
    Dict(Vec<(Value, Value)>, usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
}

fn global(module: &str, name: &str) -> Result<Global, PickleError> {
    let kind = match (module, name) {
        ("collections", "OrderedDict") => return Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            return Ok(Global::RebuildTensor)
        }
        ("torch._utils", "_rebuild_parameter") => return Ok(Global::RebuildParameter),
        ("torch", "FloatStorage") => Kind::Float,
        ("torch", "HalfStorage") => Kind::Half,
        ("torch", "BFloat16Storage") => Kind::BFloat16,
        ("torch", "DoubleStorage") => Kind::Double,
        ("torch", "LongStorage") => Kind::Int64,
        ("torch", "IntStorage") => Kind::Int,
        ("torch", "ShortStorage") => Kind::Int16,
        ("torch", "CharStorage") => Kind::Int8,
        ("torch", "ByteStorage") => Kind::Uint8,
        ("torch", "BoolStorage") => Kind::Bool,
        _ => return Err(PickleError::Forbidden(format!("{module}.{name}"))),
    };
    Ok(Global::Storage(kind))
}

/// Reads a state dict pickle: every `name → tensor` entry, in file order; entries whose value
/// is not a tensor are skipped.
pub fn read_state_dict(data: &[u8]) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let top = Machine::new(data).run()?;
    let Value::Dict(items, _) = top else {
        return Err(PickleError::Malformed(
            data.len(),
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

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Container items copied by DUP / PUT / GET so far; bounded so that a small pickle cannot
    /// make us copy a large list over and over (memory blow-up).
    copied: usize,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copied: 0,
        }
    }

    fn bad<T>(&self, msg: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Malformed(self.pos, msg.into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.bad(format!("needs {n} more bytes, the pickle ends")),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.bad("unterminated line");
        };
        let s = std::str::from_utf8(&rest[..n]).or_else(|_| self.bad("line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn sized(&mut self, len: u64) -> Result<&'a [u8], PickleError> {
        match usize::try_from(len) {
            Ok(n) => self.take(n),
            Err(_) => self.bad(format!("length {len} is too large")),
        }
    }

    fn text(&mut self, len: u64) -> Result<Value, PickleError> {
        let bytes = self.sized(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(s.into())),
            Err(_) => self.bad("string is not UTF-8"),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.bad("stack underflow");
        }
        self.stack
            .pop()
            .map_or_else(|| self.bad("stack underflow"), Ok)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return self.bad("no MARK on the stack");
        };
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if v.depth() > MAX_DEPTH {
            return self.bad(format!("nesting deeper than {MAX_DEPTH}"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        self.push(Value::Tuple(Rc::new(items), depth))
    }

    fn top_mut(&mut self) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.bad("stack underflow");
        }
        let pos = self.pos;
        self.stack
            .last_mut()
            .ok_or(PickleError::Malformed(pos, "stack underflow".into()))
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.bad("odd number of items for a dict");
        }
        let pos = self.pos;
        let Value::Dict(dict, depth) = self.top_mut()? else {
            return Err(PickleError::Malformed(
                pos,
                "SETITEM(S) on a non-dict".into(),
            ));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            *depth = (*depth).max(1 + k.depth().max(v.depth()));
            dict.push((k, v));
        }
        if *depth > MAX_DEPTH {
            return Err(PickleError::Malformed(
                pos,
                format!("nesting deeper than {MAX_DEPTH}"),
            ));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let pos = self.pos;
        let Value::List(list, depth) = self.top_mut()? else {
            return Err(PickleError::Malformed(
                pos,
                "APPEND(S) on a non-list".into(),
            ));
        };
        for v in items {
            *depth = (*depth).max(1 + v.depth());
            list.push(v);
        }
        if *depth > MAX_DEPTH {
            return Err(PickleError::Malformed(
                pos,
                format!("nesting deeper than {MAX_DEPTH}"),
            ));
        }
        Ok(())
    }

    /// Charges copying `v` to the copy budget (before the copy is made).
    fn charge(&mut self, v: &Value) -> Result<(), PickleError> {
        let items = match v {
            Value::List(l, _) => l.len(),
            Value::Dict(d, _) => d.len(),
            _ => 0,
        };
        self.copied = self.copied.saturating_add(items);
        if self.copied > 4 * self.data.len() + 1024 {
            return self.bad("copies lists or dicts too often");
        }
        Ok(())
    }

    /// A copy of the top of the stack, charged.
    fn copy_top(&mut self) -> Result<Value, PickleError> {
        let top = self.top_mut()?;
        let top = std::mem::replace(top, Value::None);
        let charged = self.charge(&top);
        let copy = charged.map(|()| top.clone());
        // Put the original back whatever happened.
        *self.top_mut()? = top;
        copy
    }

    fn memo_put(&mut self, id: u32) -> Result<(), PickleError> {
        let top = self.copy_top()?;
        self.memo.insert(id, top);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), PickleError> {
        let Some(v) = self.memo.remove(&id) else {
            return self.bad(format!("memo {id} was never stored"));
        };
        let copy = self.charge(&v).map(|()| v.clone());
        self.memo.insert(id, v);
        self.push(copy?)
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.le::<8>()?; // FRAME: a hint for buffered readers
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.copy_top()?;
                    self.push(top)?;
                }
                b'p' => {
                    let id = self.line()?.trim().parse::<u32>();
                    self.memo_put(id.or_else(|_| self.bad("bad PUT id"))?)?;
                }
                b'q' => {
                    let id = self.u8()?;
                    self.memo_put(u32::from(id))?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.le()?);
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).or_else(|_| self.bad("memo full"))?;
                    self.memo_put(id)?;
                }
                b'g' => {
                    let id = self.line()?.trim().parse::<u32>();
                    self.memo_get(id.or_else(|_| self.bad("bad GET id"))?)?;
                }
                b'h' => {
                    let id = self.u8()?;
                    self.memo_get(u32::from(id))?;
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.le()?);
                    self.memo_get(id)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool)?,
                0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement, up to 8 bytes here.
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return self.bad(format!("{n}-byte integer"));
                    }
                    let bytes = self.take(n)?;
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(bytes);
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    self.le::<8>()?;
                    self.push(Value::Float)?;
                }
                0x8c => {
                    let n = self.u8()?;
                    let v = self.text(u64::from(n))?;
                    self.push(v)?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?);
                    let v = self.text(u64::from(n))?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let v = self.text(n)?;
                    self.push(v)?;
                }
                b'U' => {
                    let n = self.u8()?;
                    let v = self.text(u64::from(n))?;
                    self.push(v)?;
                }
                b'T' => {
                    let n = u32::from_le_bytes(self.le()?);
                    let v = self.text(u64::from(n))?;
                    self.push(v)?;
                }
                b'C' => {
                    let n = self.u8()?;
                    self.sized(u64::from(n))?;
                    self.push(Value::Bytes)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?);
                    self.sized(u64::from(n))?;
                    self.push(Value::Bytes)?;
                }
                b')' => self.tuple(Vec::new())?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.tuple(items)?;
                }
                b']' => self.push(Value::List(Vec::new(), 1))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Vec::new(), 1))?;
                    self.append(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.push(Value::Dict(Vec::new(), 1))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new(), 1))?;
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(global(module, name)?))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.bad("STACK_GLOBAL needs two strings");
                    };
                    self.push(Value::Global(global(&module, &name)?))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD sets attributes: an OrderedDict's `_metadata`, a Parameter's state.
                    self.pop()?;
                    let pos = self.pos;
                    if !matches!(self.top_mut()?, Value::Dict(..) | Value::Tensor(_)) {
                        return Err(PickleError::Malformed(pos, "BUILD on an object".into()));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                _ => return Err(PickleError::Opcode(op, at)),
            }
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args, _) = args else {
            return self.bad("REDUCE arguments are not a tuple");
        };
        match callable {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new(), 1)),
            Value::Global(Global::RebuildTensor) => self.rebuild_tensor(&args),
            Value::Global(Global::RebuildParameter) => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => self.bad("_rebuild_parameter without a tensor"),
            },
            other => self.bad(format!("cannot call {other:?}")),
        }
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value, PickleError> {
        let (Some(Value::Storage(storage)), Some(Value::Int(offset)), Some(size), Some(stride)) =
            (args.first(), args.get(1), args.get(2), args.get(3))
        else {
            return self
                .bad("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ..)");
        };
        let ints = |v: &Value| -> Option<Vec<i64>> {
            match v {
                Value::Tuple(items, _) => items
                    .iter()
                    .map(|i| match i {
                        Value::Int(n) => Some(*n),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        let (Some(size), Some(stride), Ok(offset)) =
            (ints(size), ints(stride), u64::try_from(*offset))
        else {
            return self.bad("tensor size/stride/offset are not non-negative integers");
        };
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: (**storage).clone(),
            offset,
            size,
            stride,
        })))
    }

    fn persistent_load(&self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(items, _) = pid else {
            return self.bad("persistent id is not a tuple");
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), Value::Int(numel)]
                if &**tag == "storage" =>
            {
                let numel = u64::try_from(*numel).or_else(|_| self.bad("negative storage size"))?;
                Ok(Value::Storage(Rc::new(StorageRef {
                    key: key.to_string(),
                    kind: *kind,
                    numel,
                })))
            }
            _ => {
                self.bad("persistent id is not ('storage', torch.<T>Storage, key, location, numel)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
