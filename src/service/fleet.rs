//! The fleet from a caller's side: who serves what (`GET /v1/fleet`), and a write that waits
//! until every live replica serves it (`?wait=fleet`). Without an object store the fleet is
//! this replica alone, which serves its own writes at once.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::Error;
use super::state::Service;
use crate::store::fleet::{Member, Which};

/// Longest a write may wait for the fleet.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long a write waits for the fleet when the caller does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// What `GET /v1/fleet` shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetView {
    /// The object store (`s3://bucket/prefix`), or null for a folder store.
    pub store: Option<String>,
    /// This replica's id (null for a folder store).
    pub replica: Option<String>,
    /// Generation of the prompt manifest as this replica last read it.
    pub prompts_generation: u64,
    /// Generation of the ensemble manifest as this replica last read it.
    pub ensembles_generation: u64,
    /// Every replica with a heartbeat record, by id.
    pub replicas: Vec<Member>,
}

/// How a write's wait for the fleet ended.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetWait {
    /// The manifest generation that holds the write.
    pub generation: u64,
    /// Milliseconds waited.
    pub waited_ms: u64,
    /// Live replicas that did not serve the write by the deadline (empty: all do).
    pub behind: Vec<String>,
}

/// Query of a write: `?wait=fleet[&wait_ms=N]`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// `fleet`: answer once every live replica serves the new version (or at the deadline,
    /// with 202 and the replicas still behind).
    pub wait: Option<String>,
    /// The deadline of `wait=fleet` in milliseconds (default 30000, at most 300000).
    pub wait_ms: Option<u64>,
}

impl WaitQuery {
    /// How long to wait for the fleet; None when the write does not wait.
    pub fn deadline(&self) -> Result<Option<Duration>, Error> {
        match self.wait.as_deref() {
            None => Ok(None),
            Some("fleet") => {
                let wait = self
                    .wait_ms
                    .map_or(DEFAULT_WAIT, Duration::from_millis)
                    .min(MAX_WAIT);
                Ok(Some(wait))
            }
            Some(other) => Err(Error::Invalid(format!(
                "wait is {other:?}; the only value is \"fleet\""
            ))),
        }
    }
}

impl Service {
    /// The replicas sharing this server's store.
    pub async fn fleet(&self) -> Result<FleetView, Error> {
        let Some(fleet) = &self.fleet else {
            return Ok(FleetView {
                store: None,
                replica: None,
                prompts_generation: 0,
                ensembles_generation: 0,
                replicas: Vec::new(),
            });
        };
        let generation = |shelf: Option<&std::sync::Arc<crate::catalog::shelf::Shelf>>| {
            shelf.map_or(0, |s| s.objects().last().generation)
        };
        Ok(FleetView {
            store: self
                .registry
                .shelf()
                .map(|s| s.objects().bucket().url().to_string()),
            replica: Some(fleet.id()),
            prompts_generation: generation(self.registry.shelf()),
            ensembles_generation: generation(self.ensembles.store().shelf()),
            replicas: fleet
                .members()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        })
    }

    /// Waits up to `wait` until every live replica serves the last write to `which`'s
    /// manifest this replica made (or saw).
    pub async fn wait_fleet(&self, which: Which, wait: Duration) -> Result<FleetWait, Error> {
        let started = Instant::now();
        let shelf = match which {
            Which::Prompts => self.registry.shelf(),
            Which::Ensembles => self.ensembles.store().shelf(),
        };
        let (Some(fleet), Some(shelf)) = (&self.fleet, shelf) else {
            return Ok(FleetWait {
                generation: 0,
                waited_ms: 0,
                behind: Vec::new(),
            });
        };
        let generation = shelf.objects().last().generation;
        let deadline = tokio::time::Instant::now() + wait;
        let behind = fleet
            .wait_for(which, generation, deadline)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(FleetWait {
            generation,
            waited_ms: started.elapsed().as_millis() as u64,
            behind: behind.into_iter().map(|m| m.heartbeat.replica).collect(),
        })
    }
}
