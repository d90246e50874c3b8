//! promptd's own gRPC service (`proto/promptd.proto`): the service's capabilities on the gRPC
//! port, with the same state, batcher, limits and metrics as HTTP.
use prost::Message;
use tonic::{Request, Response, Status};

use crate::catalog::prompts::PromptInfo;
use crate::prompts::TaskName;
use crate::service::predict::PredictInput;
use crate::service::prompts::Upload;
use crate::service::tuning::TuneRequest;
use crate::service::{Error, Service};
use crate::tenants::Caller;
use crate::tune::jobs::JobStatus;
use crate::tune::Example;

use super::proto::promptd_server::{Promptd, PromptdServer};
use super::{caller, check_size, outcome, proto, status, FRAMING_BYTES};
use crate::api::requests::counted;

/// The gRPC service over the shared state.
pub struct GrpcApi {
    svc: Service,
}

/// The gRPC service, accepting messages as large as the largest HTTP body allowed.
pub fn service(svc: Service) -> PromptdServer<GrpcApi> {
    let limits = svc.limits;
    let largest = limits
        .max_prompt_bytes
        .max(limits.max_body_bytes)
        .max(svc.tuning.limits.max_body_bytes);
    PromptdServer::new(GrpcApi { svc })
        .max_decoding_message_size(largest.saturating_add(FRAMING_BYTES))
}

/// Full name of the promptd gRPC service.
pub const SERVICE_NAME: &str = "promptd.v1.Promptd";

impl GrpcApi {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        caller(&self.svc, request)
    }
}

fn task(name: &str) -> Result<TaskName, Status> {
    TaskName::parse(name).map_err(|e| status(e.into()))
}

fn info(p: PromptInfo) -> proto::PromptInfo {
    let kind = serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let adapter = p.adapter.as_ref();
    proto::PromptInfo {
        kind,
        lora_rank: adapter.and_then(|a| a.rank).map(|r| r as u64),
        modules: adapter.map(|a| a.modules.clone()).unwrap_or_default(),
        adapter_parameters: adapter.map_or(0, |a| a.parameters as u64),
        notes: p.notes,
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
    /// A predict request's input from its fields, refused past --max-body-bytes.
    fn predict_input(
        &self,
        encoded_len: usize,
        inputs: Vec<String>,
        max_new_tokens: Option<u32>,
        labels: Vec<String>,
    ) -> Result<PredictInput, Error> {
        check_size(
            encoded_len,
            self.svc.limits.max_body_bytes,
            "--max-body-bytes",
        )?;
        Ok(PredictInput {
            inputs,
            max_new_tokens: max_new_tokens.map(|n| n as usize),
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
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
        let input = self.predict_input(
            req.encoded_len(),
            req.inputs,
            req.max_new_tokens,
            req.labels,
        );
        let answer = self.svc.predict(&caller, &req.task, input);
        let answer = counted(&self.svc, &req.task, false, outcome, answer)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::PredictResponse {
            task: answer.task,
            prompt_version: answer.prompt_version,
            prompt_sha256: answer.prompt_sha256,
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
        let input = self.predict_input(
            req.encoded_len(),
            req.inputs,
            req.max_new_tokens,
            req.labels,
        );
        let answer = self.svc.ensemble_predict(&caller, &req.ensemble, input);
        let answer = counted(&self.svc, &req.ensemble, true, outcome, answer)
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
                            prompt_sha256: m.prompt_sha256,
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
        let max = self.svc.limits.max_prompt_bytes;
        let upload = TaskName::parse(&req.task)
            .map_err(Error::from)
            .and_then(|task| {
                self.svc.check_serving()?;
                self.svc.authorize_prompt_write(&caller, &task)?;
                if req.file.len() > max {
                    return Err(Error::TooLarge(format!(
                        "prompt file is {} bytes; the limit is {max} (--max-prompt-bytes)",
                        req.file.len()
                    )));
                }
                let upload = match req.adapter_config {
                    Some(config) => Upload::Peft {
                        weights: req.file,
                        config,
                    },
                    None => Upload::Tensor(req.file),
                };
                Ok((task, upload))
            });
        let (prompt, created) = self.svc.put_prompt(&caller, upload).await.map_err(status)?;
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
        let prompt = self.svc.prompt(&caller, &task).map_err(status)?;
        Ok(Response::new(info(prompt)))
    }

    async fn list_prompts(
        &self,
        request: Request<proto::ListPromptsRequest>,
    ) -> Result<Response<proto::ListPromptsResponse>, Status> {
        let caller = self.caller(&request)?;
        let all = self.svc.list_prompts(&caller).map_err(status)?;
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
        self.svc
            .delete_prompt(&caller, &task)
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
            method: r.method,
            lora_rank: size(r.lora_rank),
            lora_alpha: r.lora_alpha,
            lora_targets: (!r.lora_targets.is_empty()).then_some(r.lora_targets),
            ia3_targets: (!r.ia3_targets.is_empty()).then_some(r.ia3_targets),
            ia3_feedforward: (!r.ia3_feedforward.is_empty()).then_some(r.ia3_feedforward),
        };
        let job = self
            .svc
            .start_tune(&caller, task, req)
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
        let job = self.svc.tune_job(&caller, &id).await.map_err(status)?;
        Ok(Response::new(tune_job(job)))
    }

    async fn list_tune_jobs(
        &self,
        request: Request<proto::ListTuneJobsRequest>,
    ) -> Result<Response<proto::ListTuneJobsResponse>, Status> {
        let caller = self.caller(&request)?;
        let jobs = self.svc.list_tune_jobs(&caller).await.map_err(status)?;
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
        let job = self.svc.cancel_tune(&caller, &id).await.map_err(status)?;
        Ok(Response::new(tune_job(job)))
    }

    async fn promote_tune_job(
        &self,
        request: Request<proto::TuneJobRequest>,
    ) -> Result<Response<proto::TuneJob>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().id;
        let job = self.svc.promote_tune(&caller, &id).await.map_err(status)?;
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
        method: j.method,
    }
}
