//! A tuning job's curves as a picture: training loss and dev metric against step, drawn from
//! the job's history at the time of asking (a running job's so far).
use super::error::Error;
use super::state::Service;
use crate::tenants::Caller;

impl Service {
    /// Job `id`'s curves as an SVG document, if the caller may see the job. Drawn off the
    /// runtime: a job recorded before a restart reads its curve file first.
    pub async fn tune_job_curve(&self, caller: &Caller, id: &str) -> Result<String, Error> {
        let job = self.visible(caller, id)?;
        let tuning = self.tuning.clone();
        tokio::task::spawn_blocking(move || {
            let curve = tuning.jobs.curve(&job);
            let s = job.snapshot();
            let title = format!(
                "tuning job {}: task {}, {}, step {} of {}",
                s.id,
                s.task,
                s.state.as_str(),
                s.step,
                s.total_steps
            );
            curve.to_svg(&title)
        })
        .await
        .map_err(|e| Error::task_failed("drawing the tuning curve", e))?
        .map_err(|e| Error::Internal(e.to_string()))
    }
}
