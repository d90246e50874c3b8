//! KServe's Open Inference Protocol (v2): the tensor rules both doors share, so promptd runs as a
//! KServe ServingRuntime over HTTP ([`crate::api::http::kserve`]) and gRPC
//! ([`crate::api::grpc::kserve`]): every task is a model, its prompt version the model version.
//!
//! Inference takes one BYTES input (the texts, shape `[N]` or `[N, 1]`), an optional BYTES
//! input named `labels`, and the parameter `max_new_tokens`; it answers `text_output` (BYTES),
//! and with labels `label` (BYTES) and `scores` (FP64, `[N, labels]`). It runs through the same
//! path as `POST /v1/tasks/{task}/predict`, so limits, batching and metrics are shared. A name
//! that is not a task but an ensemble runs the ensemble
//! ([`Service::infer`](crate::service::Service::infer)).
pub mod wire;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;

use crate::catalog::prompts::{Entry, PromptInfo};
use crate::service::predict::{PredictInput, PredictResponse};
use crate::service::rows::as_count;
use crate::service::Error;

/// Name of the texts input when a client asks for metadata.
pub const TEXT_INPUT: &str = "text_input";
/// Name of the candidate-labels input.
pub const LABELS_INPUT: &str = "labels";

/// The one input datatype promptd takes: texts.
pub const BYTES: &str = "BYTES";
/// Outputs promptd answers with.
pub const OUTPUTS: [&str; 3] = ["text_output", "label", "scores"];

/// An inference request (the protocol's `$inference_request`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters; `max_new_tokens` is read.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Input tensors: one BYTES tensor of texts, optionally one named `labels`.
    #[schema(min_items = 1, max_items = 2)]
    pub inputs: Vec<InferInput>,
    /// Outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferInput {
    /// Tensor name.
    pub name: String,
    /// Dimensions; their product must equal the number of elements.
    pub shape: Vec<i64>,
    /// Element type; only BYTES is accepted.
    #[schema(schema_with = input_datatype_schema)]
    pub datatype: String,
    /// Elements, flat or nested in row-major order; absent when they travel as binary data.
    #[serde(default)]
    #[schema(schema_with = input_data_schema)]
    pub data: Option<Value>,
    /// `binary_data_size`: the elements are this many bytes of the body's binary part.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// An output a client asks for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// `binary_data`: answer this output as binary data.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// An output's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    /// BYTES: texts (a missing label is the empty string in binary form, null in JSON).
    Bytes(Vec<Option<String>>),
    /// FP64.
    Fp64(Vec<f64>),
}

impl Elements {
    /// The protocol's datatype name.
    pub fn datatype(&self) -> &'static str {
        match self {
            Elements::Bytes(_) => "BYTES",
            Elements::Fp64(_) => "FP64",
        }
    }

    /// Raw bytes (binary extension, gRPC `raw_output_contents`).
    pub fn raw(&self) -> Vec<u8> {
        match self {
            Elements::Bytes(items) => {
                wire::encode_bytes(items.iter().map(|s| s.as_deref().unwrap_or("")))
            }
            Elements::Fp64(items) => wire::encode_f64(items.iter().copied()),
        }
    }

    /// The elements as JSON values (a missing label is null).
    pub fn json(&self) -> Vec<Value> {
        match self {
            Elements::Bytes(items) => items
                .iter()
                .map(|s| s.clone().map(Value::from).unwrap_or(Value::Null))
                .collect(),
            Elements::Fp64(items) => items.iter().map(|&f| Value::from(f)).collect(),
        }
    }
}

/// One output of an answer, before it is put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Tensor name.
    pub name: &'static str,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements.
    pub elements: Elements,
}

fn input_datatype_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([BYTES]))
        .description(Some("Element type; only BYTES is accepted."))
}

fn input_data_schema() -> impl Into<RefOr<Schema>> {
    // Strings, or arrays of them nested to the tensor's rank; a rank-0 tensor's one element
    // (shape `[]`) may stand alone.
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let nested = ArrayBuilder::new().items(ObjectBuilder::new().schema_type(SchemaType::AnyValue));
    let elements = ArrayBuilder::new().items(OneOfBuilder::new().item(text()).item(nested));
    OneOfBuilder::new().item(elements).item(text())
}

/// Body of `GET /v2`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    /// `promptd`.
    pub name: &'static str,
    /// promptd's version.
    pub version: &'static str,
    /// Protocol extensions: `binary_tensor_data`.
    pub extensions: Vec<String>,
}

/// promptd's server metadata.
pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "promptd",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data".into()],
    }
}

/// One tensor in model metadata.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: &'static str,
    /// Element type.
    pub datatype: &'static str,
    /// Dimensions; -1 is variable.
    pub shape: Vec<i64>,
}

/// Body of `GET /v2/models/{task}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    /// The task.
    pub name: String,
    /// The served prompt version.
    pub versions: Vec<String>,
    /// `promptd_t5_soft_prompt`.
    pub platform: &'static str,
    /// Inputs: the texts, and optional candidate labels.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs: text_output, and with labels label and scores.
    pub outputs: Vec<TensorMetadata>,
    /// The prompt's metadata.
    pub parameters: PromptInfo,
}

fn tensor(name: &'static str, datatype: &'static str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata {
        name,
        datatype,
        shape: shape.to_vec(),
    }
}

/// A served task's metadata as a model's.
pub fn metadata(entry: &Entry) -> ModelMetadata {
    {
        ModelMetadata {
            name: entry.info.task.clone(),
            versions: vec![entry.info.version.to_string()],
            platform: "promptd_t5_soft_prompt",
            inputs: vec![
                tensor(TEXT_INPUT, "BYTES", &[-1]),
                tensor(LABELS_INPUT, "BYTES", &[-1]),
            ],
            outputs: vec![
                tensor("text_output", "BYTES", &[-1]),
                tensor("label", "BYTES", &[-1]),
                tensor("scores", "FP64", &[-1, -1]),
            ],
            parameters: entry.info.clone(),
        }
    }
}

/// A parameter of a request, input or output, by name.
pub(crate) fn param<'a>(
    params: &'a Option<serde_json::Map<String, Value>>,
    name: &str,
) -> Option<&'a Value> {
    params.as_ref().and_then(|p| p.get(name))
}

/// Maps a decoded inference request onto a predict request; every mistake is a 400 naming
/// the field. `elements` are the inputs' texts, in input order.
pub fn to_input(req: &InferRequest, elements: Vec<Vec<String>>) -> Result<PredictInput, Error> {
    let bad = Error::Malformed;
    let mut texts = None;
    let mut labels = None;
    for (input, data) in req.inputs.iter().zip(elements) {
        let slot = if input.name == LABELS_INPUT {
            &mut labels
        } else {
            &mut texts
        };
        if slot.replace(data).is_some() {
            return Err(bad(format!(
                "more than one text input (second: {:?}); send one BYTES input of texts and optionally `{LABELS_INPUT}`",
                input.name
            )));
        }
    }
    let texts = texts.ok_or_else(|| bad("no BYTES input with the texts".into()))?;
    if let Some(outputs) = &req.outputs {
        for o in outputs {
            if !OUTPUTS.contains(&o.name.as_str()) {
                return Err(bad(format!(
                    "unknown output {:?}; outputs are text_output, label, scores",
                    o.name
                )));
            }
        }
    }
    let max_new_tokens = match param(&req.parameters, "max_new_tokens") {
        None => None,
        Some(v) => Some(v.as_number().and_then(as_count).ok_or_else(|| {
            Error::Invalid(format!(
                "parameter max_new_tokens must be a non-negative integer, got {v}"
            ))
        })?),
    };
    Ok(PredictInput {
        inputs: texts,
        max_new_tokens,
        labels,
        ..Default::default()
    })
}

/// The outputs of an answer (`text_output`, and with labels `label` and `scores`), only those
/// asked for when `wanted` is given.
pub fn outputs(answer: &PredictResponse, wanted: Option<&[RequestedOutput]>) -> Vec<Output> {
    let n = answer.outputs.len();
    let mut outputs = vec![Output {
        name: "text_output",
        shape: vec![n],
        elements: Elements::Bytes(
            answer
                .outputs
                .iter()
                .map(|o| Some(o.text.clone()))
                .collect(),
        ),
    }];
    if let Some(first) = answer.outputs.first().and_then(|o| o.scores.as_ref()) {
        outputs.push(Output {
            name: "label",
            shape: vec![n],
            elements: Elements::Bytes(answer.outputs.iter().map(|o| o.label.clone()).collect()),
        });
        outputs.push(Output {
            name: "scores",
            shape: vec![n, first.len()],
            elements: Elements::Fp64(
                answer
                    .outputs
                    .iter()
                    .flat_map(|o| o.scores.clone().unwrap_or_default())
                    .collect(),
            ),
        });
    }
    if let Some(wanted) = wanted {
        outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
    }
    outputs
}

/// Checks that an input holds texts: promptd takes only [`BYTES`].
pub(crate) fn check_datatype(name: &str, datatype: &str) -> Result<(), Error> {
    if datatype != BYTES {
        return Err(Error::Malformed(format!(
            "input {name:?} has datatype {datatype:?}; promptd takes BYTES (text)"
        )));
    }
    Ok(())
}

/// Checks that `input`'s shape holds exactly its `n` elements.
pub(crate) fn check_shape(input: &InferInput, n: usize) -> Result<(), Error> {
    let elements = input.shape.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    if elements != Some(n as i64) {
        return Err(Error::Malformed(format!(
            "input {:?}: shape {:?} does not hold its {n} elements",
            input.name, input.shape,
        )));
    }
    Ok(())
}
