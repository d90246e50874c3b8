//! The stack machine: the opcodes torch writes, over the allow-listed values of `super::value`.
use std::collections::HashMap;
use std::rc::Rc;

use super::error::PickleError;
use super::value::{global, Global, StorageRef, TensorRef, Value, MAX_DEPTH};

pub(super) struct Machine<'a> {
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
    /// A machine for the pickle starting at byte `start` of `data`.
    pub(super) fn new(data: &'a [u8], start: usize) -> Self {
        Self {
            data,
            pos: start,
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

    /// Runs the pickle to its STOP; returns the value left on the stack and the byte after STOP.
    pub(super) fn execute(mut self) -> Result<(Value, usize), PickleError> {
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
                b'.' => return Ok((self.pop()?, self.pos)), // STOP
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
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
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
            // The legacy (pre-1.6) format adds view metadata, None for whole storages.
            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), Value::Int(numel), rest @ ..]
                if &**tag == "storage" && matches!(rest, [] | [Value::None]) =>
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
