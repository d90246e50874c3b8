//! KServe's Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, in
//! `proto/grpc_predict_v2.proto`), on the gRPC port beside promptd's own service. It is a
//! third door onto the same service: the HTTP v2 routes' tensor rules ([`crate::api::kserve`]),
//! [`Service::infer`], the same errors (mapped to gRPC codes by [`super::status`]).
use prost::Message;
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::{caller, check_size, outcome, status, FRAMING_BYTES};
use crate::api::kserve::{self as rules, wire, InferInput, InferRequest, RequestedOutput};
use crate::api::requests::counted;
use crate::service::{Error, Service};

/// Code generated from `proto/grpc_predict_v2.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;

/// Full name of the service.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// The v2 inference service over the shared state.
pub struct KserveGrpc {
    svc: Service,
}

/// The service, taking messages as large as the predict body limit allows.
pub fn service(svc: Service) -> GrpcInferenceServiceServer<KserveGrpc> {
    let max = svc.limits.max_body_bytes;
    GrpcInferenceServiceServer::new(KserveGrpc { svc })
        .max_decoding_message_size(max.saturating_add(FRAMING_BYTES))
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn json(p: &pb::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::from(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::StringParam(s)) => Value::from(s.clone()),
        Some(ParameterChoice::DoubleParam(f)) => Value::from(*f),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        None => Value::Null,
    }
}

fn params(
    map: &std::collections::HashMap<String, pb::InferParameter>,
) -> Option<serde_json::Map<String, Value>> {
    (!map.is_empty()).then(|| map.iter().map(|(k, v)| (k.clone(), json(v))).collect())
}

/// The texts of one input: from `raw_input_contents` when the request uses it (then for every
/// input, as the protocol says), else from `contents.bytes_contents`.
fn elements(input: &InferInputTensor, raw: Option<&Vec<u8>>) -> Result<Vec<String>, Error> {
    let bad = |why: String| Error::Malformed(format!("input {:?}: {why}", input.name));
    rules::check_datatype(&input.name, &input.datatype)?;
    match raw {
        Some(raw) => wire::decode_bytes(raw).map_err(bad),
        None => input
            .contents
            .iter()
            .flat_map(|c| &c.bytes_contents)
            .map(|b| {
                String::from_utf8(b.clone())
                    .map_err(|e| bad(format!("an element is not UTF-8 text: {e}")))
            })
            .collect(),
    }
}

/// The request as the HTTP route's, with each input's texts.
fn decode(req: &pb::ModelInferRequest) -> Result<(InferRequest, Vec<Vec<String>>), Error> {
    let raw = &req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(Error::Malformed(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input or none",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut texts = Vec::with_capacity(req.inputs.len());
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.iter().enumerate() {
        let items = elements(input, raw.get(i))?;
        let http = InferInput {
            name: input.name.clone(),
            shape: input.shape.clone(),
            datatype: input.datatype.clone(),
            data: None,
            parameters: None,
        };
        rules::check_shape(&http, items.len())?;
        texts.push(items);
        inputs.push(http);
    }
    let request = InferRequest {
        id: version(&req.id).map(str::to_owned),
        parameters: params(&req.parameters),
        inputs,
        outputs: (!req.outputs.is_empty()).then(|| {
            req.outputs
                .iter()
                .map(|o| RequestedOutput {
                    name: o.name.clone(),
                    parameters: None,
                })
                .collect()
        }),
    };
    Ok((request, texts))
}

#[tonic::async_trait]
impl GrpcInferenceService for KserveGrpc {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.svc.readiness().1.is_none();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let caller = caller(&self.svc, &request)?;
        let req = request.into_inner();
        self.svc
            .ready_model(&caller, &req.name, version(&req.version))
            .map_err(status)?;
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let m = rules::server_metadata();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: m.name.into(),
            version: m.version.into(),
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        use pb::model_metadata_response::TensorMetadata;
        let caller = caller(&self.svc, &request)?;
        let req = request.into_inner();
        let entry = self
            .svc
            .model(&caller, &req.name, version(&req.version))
            .map_err(status)?;
        let m = rules::metadata(&entry);
        let tensors = |ts: Vec<rules::TensorMetadata>| {
            ts.into_iter()
                .map(|t| TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.into(),
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let caller = caller(&self.svc, &request)?;
        let req = request.into_inner();
        let svc = &self.svc;
        if let Some(v) = version(&req.model_version) {
            svc.ready_model(&caller, &req.model_name, Some(v))
                .map_err(status)?;
        }
        let parsed = check_size(
            req.encoded_len(),
            svc.limits.max_body_bytes,
            "--max-body-bytes",
        )
        .and_then(|()| decode(&req));
        // A bad request still goes through the service, so it is counted like any other.
        let (input, meta) =
            match parsed.and_then(|(r, texts)| rules::to_input(&r, texts).map(|p| (p, r))) {
                Ok((p, r)) => (Ok(p), Some(r)),
                Err(e) => (Err(e), None),
            };
        let name = &req.model_name;
        let run = svc.infer(&caller, name, input);
        let answer = counted(svc, name, svc.is_ensemble_model(name), outcome, run)
            .await
            .map_err(status)?;
        let Some(meta) = meta else {
            return Err(status(Error::Internal(
                "an undecoded inference request ran".into(),
            )));
        };
        let outputs = rules::outputs(&answer, meta.outputs.as_deref());
        Ok(Response::new(pb::ModelInferResponse {
            model_name: answer.task,
            model_version: answer.prompt_version.to_string(),
            id: req.id,
            parameters: Default::default(),
            raw_output_contents: outputs.iter().map(|o| o.elements.raw()).collect(),
            outputs: outputs
                .into_iter()
                .map(|o| pb::model_infer_response::InferOutputTensor {
                    name: o.name.into(),
                    datatype: o.elements.datatype().into(),
                    shape: o.shape.iter().map(|&d| d as i64).collect(),
                    parameters: Default::default(),
                    contents: None,
                })
                .collect(),
        }))
    }
}
