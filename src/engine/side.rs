//! Side work: what the engine thread runs between serving passes on behalf of a layer above it
//! (tuning jobs' micro-steps). The engine owns this trait and the layer above implements it,
//! so the engine imports nothing of that layer.
use std::time::Duration;

use super::passes::Engine;

/// Work stepped on the engine thread between serving passes, within a share of engine time.
/// The engine calls [`SideWork::has_work`] before it blocks waiting for a job; whoever
/// submits side work wakes it with a [`super::worker::EngineWaker`] after submitting.
pub trait SideWork: Send {
    /// Whether any work waits for steps (taking in work submitted since the last call).
    fn has_work(&mut self) -> bool;

    /// Records engine time spent serving (`busy`: there was serving work).
    fn note_serving(&mut self, spent: Duration, busy: bool);

    /// Whether a step may run now (`idle`: nothing is being served this turn).
    fn may_step(&mut self, idle: bool) -> bool;

    /// Runs one step and returns the time it took.
    fn step(&mut self, engine: &mut Engine) -> Duration;

    /// Fails all work, including work submitted and not yet taken in (the engine stops).
    fn fail_all(&mut self, why: &str);
}
