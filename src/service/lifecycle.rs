//! Where the server stands, from one source: a `watch` that `/readyz`, the gRPC health
//! service and the `promptd_ready` gauge all follow. Transitions happen where the facts are
//! learnt (the engine's state, the prompts load, a dead batcher, a shutdown), never by polling.
use tokio::sync::watch;

use crate::engine::worker::{EngineHandle, EngineState};

/// The server's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Starting: what is being loaded.
    Loading(&'static str),
    /// Serving.
    Ready,
    /// Shutting down: new work is refused.
    Draining,
    /// Cannot serve (the reason): the model failed to load, the engine or the batcher stopped.
    Failed(String),
}

impl Status {
    /// The word `/readyz` shows: loading | ready | draining | failed.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Loading(_) => "loading",
            Status::Ready => "ready",
            Status::Draining => "draining",
            Status::Failed(_) => "failed",
        }
    }

    /// Why the server is not ready (`None` when it is).
    pub fn why_not(&self) -> Option<String> {
        match self {
            Status::Loading(what) => Some((*what).to_string()),
            Status::Ready => None,
            Status::Draining => Some("the server is shutting down".into()),
            Status::Failed(why) => Some(why.clone()),
        }
    }
}

/// The readiness source.
#[derive(Debug)]
pub struct Lifecycle {
    status: watch::Sender<Status>,
    gauge: Option<prometheus::IntGauge>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Lifecycle {
    /// Loading the model; `gauge` (promptd_ready) follows every transition.
    pub fn new(gauge: Option<prometheus::IntGauge>) -> Self {
        let (status, _) = watch::channel(Status::Loading("loading the model"));
        if let Some(g) = &gauge {
            g.set(0);
        }
        Self { status, gauge }
    }

    /// The state now.
    pub fn current(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Whether requests may be served.
    pub fn is_ready(&self) -> bool {
        *self.status.borrow() == Status::Ready
    }

    /// Every transition from now on.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    fn transition(&self, change: impl FnOnce(&Status) -> Option<Status>) {
        self.status.send_if_modified(|status| match change(status) {
            Some(next) if next != *status => {
                tracing::info!(from = status.word(), to = next.word(), "readiness");
                *status = next;
                if let Some(g) = &self.gauge {
                    g.set(i64::from(*status == Status::Ready));
                }
                true
            }
            _ => false,
        });
    }

    /// Still loading, now `what`.
    pub fn loading(&self, what: &'static str) {
        self.transition(|s| matches!(s, Status::Loading(_)).then_some(Status::Loading(what)));
    }

    /// Loaded: ready (unless it failed or drains meanwhile).
    pub fn ready(&self) {
        self.transition(|s| matches!(s, Status::Loading(_)).then_some(Status::Ready));
    }

    /// Shutting down (a failure keeps its reason).
    pub fn drain(&self) {
        self.transition(|s| (!matches!(s, Status::Failed(_))).then_some(Status::Draining));
    }

    /// Cannot serve any more, because of `why` (a drain already under way stays one).
    pub fn fail(&self, why: String) {
        self.transition(|s| (*s != Status::Draining).then_some(Status::Failed(why)));
    }

    /// Follows the engine thread: a model that fails to load or an engine that stops fails
    /// readiness. Returns when the engine has stopped.
    pub async fn follow_engine(&self, engine: EngineHandle) {
        let mut states = engine.subscribe();
        // Only its states are followed: holding the handle would keep the engine thread from
        // ending when the server lets go of it at shutdown.
        drop(engine);
        loop {
            let state = states.borrow_and_update().clone();
            match state {
                EngineState::Loading => {}
                EngineState::Ready => self.loading("loading prompts"),
                EngineState::Failed(why) => {
                    return self.fail(format!("model failed to load: {why}"));
                }
                EngineState::Stopped => return self.fail("the engine has stopped".into()),
            }
            if states.changed().await.is_err() {
                return self.fail("the engine has stopped".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_rules() {
        let gauge = prometheus::IntGauge::new("ready", "ready").unwrap();
        let l = Lifecycle::new(Some(gauge.clone()));
        let mut rx = l.subscribe();
        assert_eq!(l.current().word(), "loading");
        l.loading("loading prompts");
        assert_eq!(l.current(), Status::Loading("loading prompts"));
        l.ready();
        assert!(l.is_ready());
        assert_eq!(gauge.get(), 1);
        assert!(rx.has_changed().unwrap());
        // Ready does not go back to loading.
        l.loading("loading prompts");
        assert!(l.is_ready());
        l.fail("the batcher stopped".into());
        assert_eq!(l.current(), Status::Failed("the batcher stopped".into()));
        assert_eq!(gauge.get(), 0);
        // A failure keeps its reason through a drain; a drain is not turned into a failure.
        l.drain();
        assert_eq!(l.current().word(), "failed");
        let l = Lifecycle::default();
        l.drain();
        l.fail("late".into());
        l.ready();
        assert_eq!(l.current(), Status::Draining);
        assert_eq!(
            l.current().why_not().unwrap(),
            "the server is shutting down"
        );
        rx.mark_unchanged();
    }
}
