//! Per-key leases with fencing: at most one runner builds a key, and a runner that lost its lease
//! (suspended, partitioned, throttled past the timeout) finds out and never commits that key.
//!
//! A lease is `_locks/<kind>/<key>.json`, created if absent. Every later write (heartbeat,
//! takeover, release) is a compare-and-swap on the version read before it (S3 `If-Match`; locally
//! an atomic rename-aside, see [`Store::put_if_version`]), so two runners never both win, and a
//! runner can never refresh or release a lease that is no longer its own. Staleness is judged by
//! the store's clock ([`Store::now`] against the record's modification time), never by comparing
//! the writer's clock with the reader's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::key::StageKey;
use crate::store::{Lease, ObjVersion, Record, Store};

/// Seconds since the Unix epoch on this host's clock (0 before 1970).
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where a pid means something: hostname, kernel boot id and pid namespace. Two containers with
/// the same hostname but separate pid namespaces get different ids, so neither judges the
/// other's live lease by a pid it cannot see.
pub fn host_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let pidns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "{}/{}/{}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id"),
        pidns
    )
}

/// Whether a process of this host (this pid namespace) is alive; zombies count as dead.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// What a lease record means to a reader.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseState {
    /// No lease, or a released one.
    Free,
    /// Held by a live runner.
    Live {
        owner: String,
        /// When its stage last reported progress or a log line (the watchdog's input).
        activity_unix: Option<f64>,
    },
    /// Its holder is gone: may be taken over (by compare-and-swap).
    Stale { why: String },
}

/// Judges a lease record at `store_now` (the store's clock).
pub fn judge(record: &Record<Lease>, store_now: f64, lease_secs: f64) -> LeaseState {
    match record {
        Record::Absent => LeaseState::Free,
        Record::Corrupt { .. } => LeaseState::Stale {
            why: "its lease record is unreadable".into(),
        },
        Record::Found {
            value,
            modified_unix,
            ..
        } => {
            if value.released {
                return LeaseState::Free;
            }
            if !value.host_id.is_empty() && value.host_id == host_id() && !pid_alive(value.pid) {
                return LeaseState::Stale {
                    why: format!("its process {} on this host is gone", value.pid),
                };
            }
            let age = store_now - modified_unix;
            if age > lease_secs {
                return LeaseState::Stale {
                    why: format!("not refreshed for {age:.0} s (store clock)"),
                };
            }
            LeaseState::Live {
                owner: value.owner.clone(),
                activity_unix: value.activity_unix,
            }
        }
    }
}

/// The state of the lease of `kind`/`key` now.
pub fn state(store: &Store, kind: &str, key: &StageKey, lease_secs: f64) -> Result<LeaseState> {
    let record = store.get_record::<Lease>(&Store::lock_path(kind, key))?;
    if matches!(record, Record::Absent) {
        return Ok(LeaseState::Free);
    }
    Ok(judge(&record, store.now()?, lease_secs))
}

/// A lease this runner holds.
#[derive(Debug)]
pub struct HeldLease {
    pub path: String,
    lease: Lease,
    version: ObjVersion,
    last_ok: Instant,
    /// Set once the lease is known (or must be assumed) lost.
    pub lost: Arc<AtomicBool>,
}

impl HeldLease {
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// When the stage under this lease last reported progress; written with the next refresh.
    pub fn note_activity(&mut self, unix: Option<f64>) {
        if unix.is_some() {
            self.lease.activity_unix = unix;
        }
    }
}

pub enum Acquired {
    Held {
        lease: Box<HeldLease>,
        /// A corrupt complete artifact found under the lease and moved aside (to be rebuilt).
        quarantined: Option<String>,
    },
    /// The artifact is complete and sound: nothing to build.
    Complete,
}

/// The bytes of a lease record as the runner writes them.
pub fn record_bytes(lease: &Lease) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(lease).expect("serialisable"))
}

/// Takes the lease of a key, waiting while a live runner holds it (`on_wait` is told its owner
/// once). A stale lease is taken over by compare-and-swap, so of two runners that both see it
/// stale exactly one wins. Under the lease, a complete artifact whose files do not match their
/// recorded sizes is moved aside so the caller rebuilds it.
#[allow(clippy::too_many_arguments)]
pub fn acquire(
    store: &Store,
    kind: &str,
    key: &StageKey,
    template: &Lease,
    lease_secs: f64,
    on_wait: &mut dyn FnMut(&str),
    cancel: &AtomicBool,
) -> Result<Acquired> {
    acquire_for(
        store, kind, key, template, lease_secs, on_wait, cancel, false,
    )
}

/// [`acquire`]; with `replace` (a forced rebuild) a complete artifact does not end the wait: the
/// lease is taken all the same, and the caller publishes over the artifact.
#[allow(clippy::too_many_arguments)]
pub fn acquire_for(
    store: &Store,
    kind: &str,
    key: &StageKey,
    template: &Lease,
    lease_secs: f64,
    on_wait: &mut dyn FnMut(&str),
    cancel: &AtomicBool,
    replace: bool,
) -> Result<Acquired> {
    let path = Store::lock_path(kind, key);
    let mut lease = template.clone();
    lease.token = crate::store::unique_token();
    lease.host_id = host_id();
    lease.released = false;
    let mut announced = false;
    loop {
        if !replace && store.is_sound(kind, key)? {
            return Ok(Acquired::Complete);
        }
        lease.heartbeat_unix = now_unix();
        let mut version = store.create_versioned(&path, record_bytes(&lease))?;
        if version.is_none() {
            let record = store.get_record::<Lease>(&path)?;
            let current = match &record {
                Record::Absent => continue,
                Record::Corrupt { version, .. } | Record::Found { version, .. } => version.clone(),
            };
            match judge(&record, store.now()?, lease_secs) {
                LeaseState::Free | LeaseState::Stale { .. } => {
                    version = store.put_if_version(&path, record_bytes(&lease), &current)?;
                }
                LeaseState::Live { owner, .. } => {
                    if !announced {
                        on_wait(&owner);
                        announced = true;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::CancelledWaiting {
                            instance: lease.instance.clone(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let Some(version) = version else {
            continue; // someone else won the race: look again
        };
        let mut held = HeldLease {
            path: path.clone(),
            lease: lease.clone(),
            version,
            last_ok: Instant::now(),
            lost: Arc::new(AtomicBool::new(false)),
        };
        // Re-check under the lease: the holder may have committed and released meanwhile.
        let item = [(kind.to_string(), key.clone())];
        if !replace && store.complete_many(&item)?[0] {
            if store.check_sizes(&item)?[0].is_empty() {
                release(store, &mut held)?;
                return Ok(Acquired::Complete);
            }
            let to = store.quarantine(kind, key)?;
            return Ok(Acquired::Held {
                lease: Box::new(held),
                quarantined: Some(to),
            });
        }
        return Ok(Acquired::Held {
            lease: Box::new(held),
            quarantined: None,
        });
    }
}

/// Refreshes a held lease (compare-and-swap on its last version). `false` once it is lost: taken
/// over by another runner, or not confirmed for 3/4 of the lease timeout (then another runner
/// may already judge it stale).
pub fn refresh(store: &Store, held: &mut HeldLease, lease_secs: f64) -> bool {
    refresh_at(store, held, now_unix(), lease_secs)
}

/// [`refresh`] with the heartbeat time given. A failed condition is read back before the lease
/// is given up: when a request's first attempt landed but its answer was lost, the client's retry
/// fails its condition against our own write, and the record then holds exactly the heartbeat we
/// sent, so the lease is still ours (the rule the manifest create follows, docs/store.md).
pub fn refresh_at(
    store: &Store,
    held: &mut HeldLease,
    heartbeat_unix: f64,
    lease_secs: f64,
) -> bool {
    if held.is_lost() {
        return false;
    }
    let mut next = held.lease.clone();
    next.heartbeat_unix = heartbeat_unix;
    let bytes = record_bytes(&next);
    let written = match store.put_if_version(&held.path, bytes.clone(), &held.version) {
        Ok(None) => match store.get_versioned(&held.path) {
            Ok(Some((found, version, _))) if found == bytes => Ok(Some(version)),
            _ => Ok(None),
        },
        other => other,
    };
    match written {
        Ok(Some(v)) => {
            held.version = v;
            held.lease = next;
            held.last_ok = Instant::now();
            true
        }
        Ok(None) => {
            held.lost.store(true, Ordering::SeqCst);
            false
        }
        Err(_) if held.last_ok.elapsed().as_secs_f64() < lease_secs * 0.75 => true,
        Err(_) => {
            held.lost.store(true, Ordering::SeqCst);
            false
        }
    }
}

/// Releases a held lease if it is still ours (a conditional delete locally, a conditional
/// overwrite with a `released` mark on S3, which has no conditional delete).
pub fn release(store: &Store, held: &mut HeldLease) -> Result<()> {
    if held.is_lost() {
        return Ok(());
    }
    held.lost.store(true, Ordering::SeqCst);
    if store.local_root().is_some() {
        store.delete_if_version_local(&held.path, &held.version)?;
        return Ok(());
    }
    let mut mark = held.lease.clone();
    mark.released = true;
    store.put_if_version(&held.path, record_bytes(&mark), &held.version)?;
    Ok(())
}
