//! Tuning jobs fleet-wide: every job's record (`tune-jobs/<id>.json`) and candidate prompt
//! (`tune-jobs/<id>.safetensors`) in the store, so any replica answers for any job. The replica
//! running a job rewrites its record on a lease (each persist of the job's progress); another
//! replica that finds an active job whose lease expired marks it failed, with the reason.
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::bucket::{Bucket, Write};
use super::error::StoreError;
use crate::metrics::StoreOp;
use crate::tune::jobs::{now_ms, JobState, JobStatus};

const DIR: &str = "tune-jobs";

/// Job records in the store.
pub struct RemoteJobs {
    bucket: Bucket,
    writes: mpsc::UnboundedSender<JobStatus>,
    /// A running job whose record is older than this has lost its replica.
    lease: Duration,
    /// Jobs known to have ended (their records never change again): not read by sweeps.
    ended: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl RemoteJobs {
    /// Records in `bucket`; a background task writes them in order (the newest snapshot of a
    /// job wins when several are waiting). Runs inside a Tokio runtime.
    pub fn new(bucket: Bucket, lease: Duration) -> Self {
        let (writes, mut queue) = mpsc::unbounded_channel::<JobStatus>();
        let writer = bucket.clone();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                // Coalesce what is waiting: only each job's latest snapshot is written.
                let mut order = vec![first.id.clone()];
                let mut latest = HashMap::from([(first.id.clone(), first)]);
                while let Ok(next) = queue.try_recv() {
                    if !latest.contains_key(&next.id) {
                        order.push(next.id.clone());
                    }
                    latest.insert(next.id.clone(), next);
                }
                for id in order {
                    if let Some(status) = latest.remove(&id) {
                        if let Err(e) = put_record(&writer, &status).await {
                            tracing::warn!(job = %id, "recording the tuning job in the store: {e}");
                        }
                    }
                }
            }
        });
        Self {
            bucket,
            writes,
            lease,
            ended: Default::default(),
        }
    }

    /// Marks failed every active job of another replica whose lease expired: one listing, and
    /// a read only of records older than the lease that are not known to have ended.
    pub async fn sweep(&self, me: &str) -> Result<(), StoreError> {
        let now = now_ms();
        for listed in self.bucket.list(DIR).await? {
            let Some(id) = record_id(&listed.key) else {
                continue;
            };
            let old = now.saturating_sub(listed.modified_ms) > self.lease.as_millis() as u64;
            if !old || self.ended.lock().contains(id) {
                continue;
            }
            if let Some(status) = self.get(id, me).await? {
                if !status.state.is_active() {
                    self.ended.lock().insert(id.to_string());
                }
            }
        }
        Ok(())
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Queues `status` to be written (never blocks).
    pub fn record(&self, status: JobStatus) {
        let _ = self.writes.send(status);
    }

    /// Job `id`'s record, with an expired lease shown as the failure it is.
    pub async fn get(&self, id: &str, me: &str) -> Result<Option<JobStatus>, StoreError> {
        let key = format!("{DIR}/{id}.json");
        let Some(bytes) = self.bucket.get(&key, StoreOp::Record).await? else {
            return Ok(None);
        };
        let status: JobStatus = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
        Ok(Some(self.expire(status, me).await))
    }

    /// Every job record, oldest first.
    pub async fn list(&self, me: &str) -> Result<Vec<JobStatus>, StoreError> {
        let mut out = Vec::new();
        for listed in self.bucket.list(DIR).await? {
            let Some(id) = record_id(&listed.key) else {
                continue;
            };
            if let Some(status) = self.get(id, me).await? {
                out.push(status);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// An active job of another replica whose lease expired is failed (and so recorded).
    async fn expire(&self, mut status: JobStatus, me: &str) -> JobStatus {
        let age = now_ms().saturating_sub(status.heartbeat_ms);
        if status.state.is_active() && status.replica != me && age > self.lease.as_millis() as u64 {
            status.state = JobState::Failed;
            status.error = Some(format!(
                "replica {} stopped renewing the job's lease {:.1} s ago (at step {} of {}); marked failed by replica {me}",
                status.replica,
                age as f64 / 1000.0,
                status.step,
                status.total_steps
            ));
            status.finished_ms = Some(now_ms());
            status.eta_seconds = None;
            tracing::warn!(job = %status.id, replica = %status.replica, "a tuning job's replica is gone; marking it failed");
            if let Err(e) = put_record(&self.bucket, &status).await {
                tracing::warn!(job = %status.id, "recording the failed job: {e}");
            }
        }
        status
    }

    /// Keeps a candidate prompt beside its record.
    pub async fn save_candidate(&self, id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.bucket
            .put(
                &format!("{DIR}/{id}.safetensors"),
                Bytes::from(bytes),
                Write::Overwrite,
                StoreOp::Record,
            )
            .await
            .map(|_| ())
    }

    /// Job `id`'s candidate prompt, if any.
    pub async fn candidate(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        self.bucket
            .get(&format!("{DIR}/{id}.safetensors"), StoreOp::Record)
            .await
    }
}

/// The job id of a record's key (`tune-jobs/<id>.json`); None for candidates and others.
fn record_id(key: &str) -> Option<&str> {
    key.strip_prefix(DIR)?
        .strip_prefix('/')?
        .strip_suffix(".json")
}

async fn put_record(bucket: &Bucket, status: &JobStatus) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(status).unwrap_or_default();
    bucket
        .put(
            &format!("{DIR}/{}.json", status.id),
            Bytes::from(bytes),
            Write::Overwrite,
            StoreOp::Record,
        )
        .await
        .map(|_| ())
}
