//! The one policy for a backend that is still listed right after its client went away.
//!
//! A closing session stays in `pg_stat_activity` or the process list for a moment after
//! its socket closed. Teardown looks again, soon and then less often, until a deadline; only
//! then does it conclude that the user is still in use.

use std::time::{Duration, Instant};

/// Pauses between looks at a backend that is still listed, until a deadline.
#[derive(Debug)]
pub struct Settle {
    deadline: Instant,
    pause: Duration,
    longest: Duration,
}

impl Settle {
    /// Looks for at most `settle_time`, pausing `first_pause` first, then twice as long
    /// each time, never longer than `longest_pause`.
    pub fn new(settle_time: Duration, first_pause: Duration, longest_pause: Duration) -> Self {
        Settle {
            deadline: Instant::now() + settle_time,
            pause: first_pause.min(longest_pause),
            longest: longest_pause.max(first_pause),
        }
    }

    /// The provisioners' own look at a closing backend: 5 ms first, at most `poll` apart.
    pub fn closing_backend(settle_time: Duration, poll: Duration) -> Self {
        Settle::new(settle_time, Duration::from_millis(5), poll)
    }

    /// Waits before the next look; `false` (without waiting) once the deadline has passed.
    pub async fn wait(&mut self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(self.longest);
        true
    }
}
