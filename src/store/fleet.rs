//! The fleet as the store sees it: every replica heartbeats a small record
//! (`replicas/<id>.json`: its id, address and the manifest generations it has applied), so a
//! writer can wait until every live replica serves its change, and `GET /v1/fleet` can list
//! who serves what.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, Write};
use super::error::StoreError;
use crate::metrics::StoreOp;
use crate::tune::jobs::now_ms;

/// A replica writes its record at least this often, even when nothing changed.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// ... and at most this often when what it applied changes (a write storm would otherwise
/// cost one store write per replica per poll).
pub const HEARTBEAT_AT_MOST: Duration = Duration::from_millis(500);
/// A replica whose record is older than this is not live (3 missed heartbeats).
pub const LIVE_FOR: Duration = Duration::from_secs(15);
/// Records older than this are removed by whoever lists the fleet.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// What one replica has applied, as it last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    /// The replica's id (`--replica-id`, else host name and process id).
    pub replica: String,
    /// Where it listens, as it was told (`--addr`).
    pub addr: String,
    /// Generation of the prompt manifest whose every change it serves.
    pub prompts_generation: u64,
    /// Generation of the ensemble manifest whose every change it serves.
    pub ensembles_generation: u64,
    /// When it wrote this record, ms since the Unix epoch.
    pub at_ms: u64,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// A replica in `GET /v1/fleet`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// Its last heartbeat.
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Milliseconds since that heartbeat.
    pub seen_ms_ago: u64,
    /// Whether it heartbeat within the last 15 s.
    pub live: bool,
}

/// Which catalog a generation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The prompts.
    Prompts,
    /// The ensembles.
    Ensembles,
}

impl Heartbeat {
    fn generation(&self, which: Which) -> u64 {
        match which {
            Which::Prompts => self.prompts_generation,
            Which::Ensembles => self.ensembles_generation,
        }
    }
}

/// This replica's place in the fleet.
pub struct Fleet {
    bucket: Bucket,
    /// The record as last written (None before the first).
    sent: Mutex<Option<Heartbeat>>,
    me: Mutex<Heartbeat>,
    /// When the catalogs last matched the store (ms since the epoch; 0: never).
    synced_ms: AtomicU64,
}

impl Fleet {
    /// Replica `id` listening on `addr`, in `bucket`.
    pub fn new(bucket: Bucket, id: String, addr: String) -> Self {
        let started = now_ms();
        Self {
            bucket,
            sent: Mutex::new(None),
            me: Mutex::new(Heartbeat {
                replica: id,
                addr,
                prompts_generation: 0,
                ensembles_generation: 0,
                at_ms: started,
                started_at_ms: started,
            }),
            synced_ms: AtomicU64::new(0),
        }
    }

    /// This replica's id.
    pub fn id(&self) -> String {
        self.me.lock().replica.clone()
    }

    /// The address this replica listens on, for its record.
    pub fn set_addr(&self, addr: String) {
        self.me.lock().addr = addr;
    }

    /// Records that the catalogs match the store now.
    pub fn synced_now(&self) {
        self.synced_ms.store(now_ms(), Ordering::Release);
    }

    /// Seconds since the catalogs last matched the store (since start when never).
    pub fn sync_age_s(&self) -> f64 {
        let since = match self.synced_ms.load(Ordering::Acquire) {
            0 => self.me.lock().started_at_ms,
            ms => ms,
        };
        now_ms().saturating_sub(since) as f64 / 1000.0
    }

    fn key(id: &str) -> String {
        format!("replicas/{id}.json")
    }

    /// Writes this replica's record when what it applied changed (at most every
    /// [`HEARTBEAT_AT_MOST`]), or when the last one is [`HEARTBEAT_EVERY`] old.
    pub async fn beat(&self, prompts: u64, ensembles: u64) -> Result<(), StoreError> {
        let now = now_ms();
        let due = match &*self.sent.lock() {
            None => true,
            Some(last) => {
                let age = now.saturating_sub(last.at_ms);
                let changed =
                    last.prompts_generation != prompts || last.ensembles_generation != ensembles;
                (changed && age >= HEARTBEAT_AT_MOST.as_millis() as u64)
                    || age >= HEARTBEAT_EVERY.as_millis() as u64
            }
        };
        if !due {
            return Ok(());
        }
        let record = Heartbeat {
            prompts_generation: prompts,
            ensembles_generation: ensembles,
            at_ms: now,
            ..self.me.lock().clone()
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        self.bucket
            .put(
                &Self::key(&record.replica),
                bytes,
                Write::Overwrite,
                StoreOp::Heartbeat,
            )
            .await?;
        *self.sent.lock() = Some(record);
        Ok(())
    }

    /// Removes this replica's record (a clean shutdown: it is no longer waited for).
    pub async fn leave(&self) {
        let _ = self.bucket.delete(&Self::key(&self.id())).await;
    }

    /// Every replica with a record, live or not, by id; records of replicas gone for an hour
    /// are removed.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let now = now_ms();
        let mut out = Vec::new();
        for listed in self.bucket.list("replicas").await? {
            let Some(bytes) = self.bucket.get(&listed.key, StoreOp::Record).await? else {
                continue;
            };
            let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&bytes) else {
                continue;
            };
            let age = now.saturating_sub(heartbeat.at_ms);
            if age > FORGET_AFTER.as_millis() as u64 {
                let _ = self.bucket.delete(&listed.key).await;
                continue;
            }
            out.push(Member {
                seen_ms_ago: age,
                live: age <= LIVE_FOR.as_millis() as u64,
                heartbeat,
            });
        }
        out.sort_by(|a, b| a.heartbeat.replica.cmp(&b.heartbeat.replica));
        Ok(out)
    }

    /// Waits until every live replica has applied `generation` of `which`, or `deadline`
    /// passes; the live replicas still behind (empty: the whole fleet serves it).
    pub async fn wait_for(
        &self,
        which: Which,
        generation: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Member>, StoreError> {
        loop {
            let behind: Vec<Member> = self
                .members()
                .await?
                .into_iter()
                .filter(|m| m.live && m.heartbeat.generation(which) < generation)
                .collect();
            if behind.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(behind);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
