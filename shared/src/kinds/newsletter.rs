//! Newsletters.

use crate::jobs::JobKind;

/// Send a newsletter: start it (fix its recipients) when it is due, then
/// send its pending deliveries. A newsletter has four lanes (`lane` 0–3),
/// each a job, so several worker processes share one newsletter; a lane
/// that runs out of time hands over to its next run, and one that finds the
/// newsletter paused, cancelled or sent ends. An admin's `scheduled_jobs`
/// row of this kind (lane 0 by default) sends the newsletter at its time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendNewsletter {
    /// `newsletters.id`.
    pub newsletter_id: uuid::Uuid,
    /// Which of the newsletter's lanes (0–3).
    #[serde(default)]
    pub lane: u8,
    /// Enqueued because the newsletter was scheduled (its status): a lane
    /// that finds it back in `draft` (unscheduled) leaves it alone. An
    /// admin's job row (false) sends a draft at the row's time.
    #[serde(default)]
    pub by_status: bool,
}

impl JobKind for SendNewsletter {
    const KIND: &'static str = "send_newsletter";
    const QUEUE: &'static str = "newsletter";
    // A lane's attempts are used only by database or SMTP outages: the
    // lane hands over between slices without using one.
    const MAX_ATTEMPTS: i32 = 25;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
}
