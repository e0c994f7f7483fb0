//! The leases a runner holds while it builds, refreshed by a heartbeat thread, and the watchdog
//! that reports stages silent for longer than their `watchdog` interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lease::{now_unix, HeldLease};
use crate::stage::{Activity, ProgressSink, RunEvent};
use crate::store::Store;

/// `RunOptions::lease_secs`, and what `status`, `explain` and `gc` judge leases by).
pub const LEASE_SECS: f64 = 60.0;

pub(super) fn local_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Leases this runner holds, refreshed by a heartbeat thread.
pub(super) struct Leases {
    pub(super) held: Mutex<HashMap<String, HeldLease>>,
    pub(super) lease_secs: f64,
    /// The stages running under them, by lease path: what the watchdog and the leases' activity
    /// times are read from.
    pub(super) watched: Mutex<HashMap<String, Watched>>,
}

/// A running stage under the watchdog.
pub(super) struct Watched {
    pub(super) instance: String,
    pub(super) activity: Arc<Activity>,
    pub(super) watchdog: Duration,
    /// A `Silent` event was sent for the current silence.
    pub(super) reported: bool,
}

impl Leases {
    /// Sends one `Silent` event per silence longer than a stage's watchdog interval.
    pub(super) fn watch(&self, sink: &dyn ProgressSink) {
        for w in self.watched.lock().expect("watch lock").values_mut() {
            let silent = w.activity.silent_for();
            if silent < w.watchdog {
                w.reported = false;
            } else if !w.reported {
                w.reported = true;
                sink.event(&RunEvent::Silent {
                    instance: w.instance.clone(),
                    seconds: silent.as_secs_f64(),
                });
            }
        }
    }

    pub(super) fn activity_unix(&self, path: &str) -> Option<f64> {
        let watched = self.watched.lock().expect("watch lock");
        let w = watched.get(path)?;
        Some(now_unix() - w.activity.silent_for().as_secs_f64())
    }
}

impl Leases {
    pub(super) fn refresh(&self, store: &Store) {
        let paths: Vec<String> = self
            .held
            .lock()
            .expect("lease lock")
            .keys()
            .cloned()
            .collect();
        for path in paths {
            self.confirm(store, &path);
        }
    }

    /// Refreshes one held lease now; `false` if it is lost (or not held).
    pub(super) fn confirm(&self, store: &Store, path: &str) -> bool {
        let activity = self.activity_unix(path);
        let mut held = self.held.lock().expect("lease lock");
        match held.get_mut(path) {
            Some(h) => {
                h.note_activity(activity);
                crate::lease::refresh(store, h, self.lease_secs)
            }
            None => false,
        }
    }
}
