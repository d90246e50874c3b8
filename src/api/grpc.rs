//! The gRPC front door (`proto/promptd.proto`): the HTTP API's operations on a second port,
//! with the same state, batcher, limits and metrics. The only table from [`ApiError`] to a
//! gRPC code is here; the `error-type` trailer carries the same `error_type` as HTTP bodies.
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use super::predict::{self, PredictRequest};
use super::prompts::{self, Upload};
use super::tune::{self as tuning, TuneRequest};
use super::{ApiError, AppState};
use crate::prompts::registry::PromptInfo;
use crate::prompts::TaskName;
use crate::tenants::Caller;
use crate::tune::jobs::JobStatus;
use crate::tune::Example;

/// The encoded descriptors of `proto/promptd.proto`, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("promptd_descriptor");

/// Code generated from `proto/promptd.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("promptd.v1");
}

use proto::promptd_server::{Promptd, PromptdServer};

/// Room for protobuf framing around the largest payload a request may carry.
pub const FRAMING_BYTES: usize = 64 << 10;

/// The gRPC service over the shared state.
pub struct GrpcApi {
    state: AppState,
}

/// The gRPC service, accepting messages as large as the largest HTTP body allowed.
pub fn service(state: AppState) -> PromptdServer<GrpcApi> {
    let limits = state.limits;
    let largest = limits
        .max_prompt_bytes
        .max(limits.max_body_bytes)
        .max(state.tuning.limits.max_body_bytes);
    PromptdServer::new(GrpcApi { state })
        .max_decoding_message_size(largest.saturating_add(FRAMING_BYTES))
}

/// Serves the promptd service, KServe's v2 inference service (`inference.GRPCInferenceService`),
/// standard health checking (`grpc.health.v1`, following `/readyz`) and server reflection (v1
/// and v1alpha) on `listener` until `stop` resolves, then drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: impl std::future::Future<Output = ()>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    // grpcurl and most tools ask v1; Python's grpcio-reflection still asks v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let disabled = |e: &tonic_reflection::server::Error| {
        tracing::warn!("gRPC reflection disabled: {e}");
    };
    let reflection_v1 = reflection().build_v1().inspect_err(disabled).ok();
    let reflection_v1alpha = reflection().build_v1alpha().inspect_err(disabled).ok();
    let tracker = tokio::spawn(track_health(reporter, state.clone()));
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(super::kserve::grpc::service(state.clone()))
        .add_service(service(state))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop)
        .await;
    tracker.abort();
    if let Err(e) = result {
        tracing::error!("gRPC server stopped: {e}");
    }
}

/// Keeps the gRPC health status of the server ("") and of the services in step with the
/// readiness watch.
async fn track_health(reporter: tonic_health::server::HealthReporter, state: AppState) {
    use tonic_health::ServingStatus;
    let mut status = state.lifecycle.subscribe();
    loop {
        let ready = *status.borrow_and_update() == super::lifecycle::Status::Ready;
        let serving = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", SERVICE_NAME, super::kserve::grpc::SERVICE_NAME] {
            reporter.set_service_status(name, serving).await;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Full name of the promptd gRPC service.
pub const SERVICE_NAME: &str = "promptd.v1.Promptd";

/// The gRPC status of each error.
pub fn status(e: ApiError) -> Status {
    let code = match &e {
        ApiError::UnknownTask(_)
        | ApiError::UnknownJob(_)
        | ApiError::UnknownEnsemble(_)
        | ApiError::NotFound(_) => Code::NotFound,
        ApiError::MethodNotAllowed => Code::Unimplemented,
        ApiError::BadRequest(_)
        | ApiError::Unprocessable(_)
        | ApiError::TooLarge(_)
        | ApiError::HeadTooLarge(_)
        | ApiError::UriTooLong(_)
        | ApiError::UnsupportedMediaType(_) => Code::InvalidArgument,
        ApiError::Unauthorized(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) | ApiError::QuotaExceeded(_) => Code::PermissionDenied,
        ApiError::RateLimited { .. }
        | ApiError::QueueFull { .. }
        | ApiError::TaskQueueFull { .. } => Code::ResourceExhausted,
        ApiError::Timeout(_) => Code::DeadlineExceeded,
        ApiError::Conflict(_) => Code::FailedPrecondition,
        ApiError::Unavailable(_) => Code::Unavailable,
        ApiError::Storage(_) | ApiError::Internal(_) => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    status
        .metadata_mut()
        .insert("error-type", MetadataValue::from_static(e.error_type()));
    status
}

impl GrpcApi {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        caller(&self.state, request)
    }
}

/// The caller, from the `authorization` metadata (`Bearer <key>`), as over HTTP.
pub fn caller<T>(state: &AppState, request: &Request<T>) -> Result<Caller, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    state.tenants.authenticate(header).map_err(|e| {
        state
            .metrics
            .tenant_rejection(None, crate::metrics::Rejection::Unauthenticated);
        status(e.into())
    })
}

fn task(name: &str) -> Result<TaskName, Status> {
    TaskName::parse(name).map_err(|e| status(e.into()))
}

fn info(p: PromptInfo) -> proto::PromptInfo {
    proto::PromptInfo {
        task: p.task,
        prompt_length: p.prompt_length as u64,
        d_model: p.d_model as u64,
        version: p.version,
        sha256: p.sha256,
        decoder_prompt_length: p.decoder_prompt_length.map(|n| n as u64),
        loaded_at: p.loaded_at,
    }
}

impl GrpcApi {
    /// A predict request's body from its fields, refused past --max-body-bytes.
    fn predict_body(
        &self,
        encoded_len: usize,
        inputs: Vec<String>,
        max_new_tokens: Option<u32>,
        labels: Vec<String>,
    ) -> Result<PredictRequest, ApiError> {
        let max = self.state.limits.max_body_bytes;
        if encoded_len > max {
            return Err(ApiError::TooLarge(format!(
                "request is {encoded_len} bytes; the limit is {max} (--max-body-bytes)"
            )));
        }
        Ok(PredictRequest {
            inputs: serde_json::Value::Array(inputs.into_iter().map(Into::into).collect()),
            max_new_tokens: max_new_tokens.map(|n| n as usize),
            labels: (!labels.is_empty()).then_some(labels),
        })
    }
}

#[tonic::async_trait]
impl Promptd for GrpcApi {
    async fn predict(
        &self,
        request: Request<proto::PredictRequest>,
    ) -> Result<Response<proto::PredictResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let body = self.predict_body(
            req.encoded_len(),
            req.inputs,
            req.max_new_tokens,
            req.labels,
        );
        let answer = predict::run(&self.state, &caller, &req.task, body)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::PredictResponse {
            task: answer.task,
            prompt_version: answer.prompt_version,
            outputs: answer
                .outputs
                .into_iter()
                .map(|o| proto::Output {
                    text: o.text,
                    token_ids: o.token_ids,
                    scores: o.scores.unwrap_or_default(),
                    label: o.label,
                })
                .collect(),
        }))
    }

    async fn ensemble_predict(
        &self,
        request: Request<proto::EnsemblePredictRequest>,
    ) -> Result<Response<proto::EnsemblePredictResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let body = self.predict_body(
            req.encoded_len(),
            req.inputs,
            req.max_new_tokens,
            req.labels,
        );
        let answer = super::ensembles::run(&self.state, &caller, &req.ensemble, body)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::EnsemblePredictResponse {
            ensemble: answer.ensemble,
            version: answer.version,
            combine: answer.combine.as_str().to_string(),
            outputs: answer
                .outputs
                .into_iter()
                .map(|o| proto::EnsembleOutput {
                    answer: o.answer,
                    votes: o.votes as u32,
                    scores: o.scores.unwrap_or_default(),
                    members: o
                        .members
                        .into_iter()
                        .map(|m| proto::EnsembleMemberOutput {
                            task: m.task,
                            prompt_version: m.prompt_version,
                            answer: m.answer,
                            score: m.score,
                            text: m.text,
                            scores: m.scores.unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn put_prompt(
        &self,
        request: Request<proto::PutPromptRequest>,
    ) -> Result<Response<proto::PutPromptResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let max = self.state.limits.max_prompt_bytes;
        let upload = TaskName::parse(&req.task)
            .map_err(ApiError::from)
            .and_then(|task| {
                self.state.check_serving()?;
                prompts::authorize_write(&self.state, &caller, &task)?;
                if req.file.len() > max {
                    return Err(ApiError::TooLarge(format!(
                        "prompt file is {} bytes; the limit is {max} (--max-prompt-bytes)",
                        req.file.len()
                    )));
                }
                let upload = match req.adapter_config {
                    Some(config) => Upload::Peft {
                        weights: req.file.into(),
                        config: config.into(),
                    },
                    None => Upload::Tensor(req.file.into()),
                };
                Ok((task, upload))
            });
        let (prompt, created) = prompts::store(&self.state, &caller, upload)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::PutPromptResponse {
            prompt: Some(info(prompt)),
            created,
        }))
    }

    async fn get_prompt(
        &self,
        request: Request<proto::GetPromptRequest>,
    ) -> Result<Response<proto::PromptInfo>, Status> {
        let caller = self.caller(&request)?;
        let task = task(&request.into_inner().task)?;
        let prompt = prompts::info(&self.state, &caller, task).map_err(status)?;
        Ok(Response::new(info(prompt)))
    }

    async fn list_prompts(
        &self,
        request: Request<proto::ListPromptsRequest>,
    ) -> Result<Response<proto::ListPromptsResponse>, Status> {
        let caller = self.caller(&request)?;
        let all = prompts::all(&self.state, &caller).map_err(status)?;
        Ok(Response::new(proto::ListPromptsResponse {
            prompts: all.into_iter().map(info).collect(),
        }))
    }

    async fn delete_prompt(
        &self,
        request: Request<proto::DeletePromptRequest>,
    ) -> Result<Response<proto::DeletePromptResponse>, Status> {
        let caller = self.caller(&request)?;
        let task = task(&request.into_inner().task)?;
        prompts::remove(&self.state, &caller, task)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeletePromptResponse {}))
    }

    async fn start_tune(
        &self,
        request: Request<proto::StartTuneRequest>,
    ) -> Result<Response<proto::TuneJob>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let task = task(&r.task)?;
        let examples = |rows: Vec<proto::Example>| -> Vec<Example> {
            rows.into_iter()
                .map(|e| Example {
                    input: e.input,
                    target: e.target,
                })
                .collect()
        };
        let size = |v: Option<u64>| v.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let req = TuneRequest {
            train: examples(r.train),
            dev: examples(r.dev),
            prompt_length: size(r.prompt_length),
            steps: size(r.steps),
            epochs: size(r.epochs),
            init: r.init,
            optimizer: r.optimizer,
            lr: r.lr,
            weight_decay: r.weight_decay,
            clip_grad_norm: r.clip_grad_norm,
            batch_size: size(r.batch_size),
            labels: (!r.labels.is_empty()).then_some(r.labels),
            metric: r.metric,
            eval_every: size(r.eval_every),
            patience: size(r.patience),
            dropout: r.dropout,
            seed: r.seed,
        };
        let job = tuning::start_job(&self.state, &caller, task, req)
            .await
            .map_err(status)?;
        Ok(Response::new(tune_job(job)))
    }

    async fn get_tune_job(
        &self,
        request: Request<proto::TuneJobRequest>,
    ) -> Result<Response<proto::TuneJob>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().id;
        let job = tuning::job_status(&self.state, &caller, &id).map_err(status)?;
        Ok(Response::new(tune_job(job)))
    }

    async fn list_tune_jobs(
        &self,
        request: Request<proto::ListTuneJobsRequest>,
    ) -> Result<Response<proto::ListTuneJobsResponse>, Status> {
        let caller = self.caller(&request)?;
        let jobs = tuning::list_jobs(&self.state, &caller);
        Ok(Response::new(proto::ListTuneJobsResponse {
            jobs: jobs.into_iter().map(tune_job).collect(),
        }))
    }

    async fn cancel_tune_job(
        &self,
        request: Request<proto::TuneJobRequest>,
    ) -> Result<Response<proto::TuneJob>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().id;
        let job = tuning::cancel_job(&self.state, &caller, &id).map_err(status)?;
        Ok(Response::new(tune_job(job)))
    }

    async fn promote_tune_job(
        &self,
        request: Request<proto::TuneJobRequest>,
    ) -> Result<Response<proto::TuneJob>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().id;
        let job = tuning::promote_job(&self.state, &caller, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(tune_job(job)))
    }
}

fn tune_job(j: JobStatus) -> proto::TuneJob {
    proto::TuneJob {
        id: j.id,
        task: j.task,
        tenant: j.tenant,
        state: j.state.as_str().to_string(),
        step: j.step as u64,
        total_steps: j.total_steps as u64,
        loss: j.loss,
        metric: j.metric,
        dev_metric: j.dev_metric,
        best_metric: j.best_metric,
        best_step: j.best_step.map(|s| s as u64),
        current_metric: j.current_metric,
        eta_seconds: j.eta_seconds,
        engine_seconds: j.engine_seconds,
        version: j.version,
        error: j.error,
        created_ms: j.created_ms,
        finished_ms: j.finished_ms,
    }
}
