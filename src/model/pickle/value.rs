//! What a state dict's pickle may hold: values, the allow-listed globals, tensor and storage
//! references.
use std::rc::Rc;

use tch::Kind;

use super::error::PickleError;

/// Deepest nesting a state dict needs (dict → rebuild args → shape tuple) with room to spare;
/// bounds recursion when values are dropped or inspected.
pub(super) const MAX_DEPTH: usize = 32;

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
pub(super) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Kind),
}

#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    Bool(bool),
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
    pub(super) fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
}

pub(super) fn global(module: &str, name: &str) -> Result<Global, PickleError> {
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
