//! Leader election over a `coordination.k8s.io/v1` Lease, so several
//! operator replicas can run and exactly one reconciles. kube-rs has no
//! election of its own; this is client-go's protocol in small:
//!
//! - a follower takes the lease over only once its record has not changed
//!   for the lease duration *by the follower's own clock* (observed time),
//!   so clock skew between replicas cannot make two leaders;
//! - the leader stops leading when it could not renew within the renew
//!   deadline, which is shorter than the lease: it is gone before anyone may
//!   take over. Reconciles ask [`Leadership::valid`] first, so a leader
//!   frozen past its deadline does nothing when it wakes, and exits;
//! - every API call has a timeout, and every write is a compare-and-swap
//!   on the lease's resourceVersion;
//! - the lease is released on SIGTERM, so a rolling upgrade hands over at
//!   once instead of after the lease duration.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::time::Instant;
use tracing::{info, warn};

/// What to do with the lease, given what it says now.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseAction {
    Create,
    Renew,
    TakeOver,
    /// Someone else holds a lease that was renewed recently, as this
    /// replica observed it.
    Follow {
        holder: String,
    },
}

/// `unchanged_for`: how long this replica has seen the same lease record.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> LeaseAction {
    let Some(spec) = spec else { return LeaseAction::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return LeaseAction::Renew;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if holder.is_empty() || unchanged_for >= duration {
        LeaseAction::TakeOver
    } else {
        LeaseAction::Follow { holder }
    }
}

/// The timing of an election, as client-go names it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a lease holds without renewal.
    pub lease: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try.
    pub retry: Duration,
}

impl Timing {
    /// client-go's proportions: 15 s, 10 s and 2 s for a 15 s lease.
    pub fn for_lease(lease: Duration) -> Timing {
        let lease = lease.max(Duration::from_secs(1));
        Timing { lease, renew_deadline: lease * 2 / 3, retry: lease * 2 / 15 }
    }
}

/// Whether this replica may act as the leader right now.
#[derive(Debug)]
pub struct Leadership {
    /// When the last successful renewal started (the conservative end).
    renewed: Mutex<Option<Instant>>,
    renew_deadline: Duration,
}

impl Leadership {
    fn new(renew_deadline: Duration) -> Leadership {
        Leadership { renewed: Mutex::new(None), renew_deadline }
    }

    fn renewed_at(&self, at: Instant) {
        if let Ok(mut r) = self.renewed.lock() {
            *r = Some(at);
        }
    }

    /// Leading, and renewed within the renew deadline by this process's
    /// clock: a process frozen past it wakes up invalid.
    pub fn valid(&self) -> bool {
        self.renewed.lock().ok().and_then(|r| *r).is_some_and(|at| at.elapsed() < self.renew_deadline)
    }
}

pub struct Election {
    api: Api<Lease>,
    name: String,
    me: String,
    timing: Timing,
    /// The lease record last seen and since when, by this replica's clock.
    observed: Option<(String, Instant)>,
}

/// The election to release on SIGTERM.
static RELEASE: OnceLock<(Api<Lease>, String, String)> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("the lease call took longer than {0:?}")]
    Timeout(Duration),
}

impl Election {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, timing: Timing) -> Election {
        Election { api: Api::namespaced(client, namespace), name: name.into(), me: me.into(), timing, observed: None }
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(self.timing.lease.as_secs().max(1) as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Every call is bounded: a hung API server must not hold the leader
    /// past its deadline unnoticed.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaderError> {
        let limit = self.timing.retry.max(Duration::from_secs(1));
        tokio::time::timeout(limit, call).await.map_err(|_| LeaderError::Timeout(limit))?.map_err(Into::into)
    }

    /// One round: `Ok(true)` while this replica leads.
    pub async fn round(&mut self) -> Result<bool, LeaderError> {
        let current = self.bounded(self.api.get_opt(&self.name)).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let record = spec.map(|s| format!("{:?}/{:?}/{:?}", s.holder_identity, s.renew_time, s.lease_transitions));
        let now = Instant::now();
        let unchanged_for = match (&self.observed, &record) {
            (Some((seen, since)), Some(r)) if seen == r => now.duration_since(*since),
            _ => {
                self.observed = record.map(|r| (r, now));
                Duration::ZERO
            }
        };
        match decide(spec, &self.me, unchanged_for) {
            LeaseAction::Create => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(self.spec(0)),
                };
                Ok(self.bounded(self.api.create(&PostParams::default(), &lease)).await.is_ok())
            }
            LeaseAction::Renew | LeaseAction::TakeOver => {
                let Some(mut lease) = current else { return Ok(false) };
                let old = lease.spec.clone().unwrap_or_default();
                let took_over = old.holder_identity.as_deref() != Some(self.me.as_str());
                let mut spec = self.spec(old.lease_transitions.unwrap_or(0) + i32::from(took_over));
                if !took_over {
                    spec.acquire_time = old.acquire_time;
                }
                lease.spec = Some(spec);
                // The resourceVersion in `lease` makes this a compare-and-swap.
                match self.bounded(self.api.replace(&self.name, &PostParams::default(), &lease)).await {
                    Ok(_) => Ok(true),
                    Err(LeaderError::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            LeaseAction::Follow { .. } => Ok(false),
        }
    }

    /// Waits until this replica leads, then keeps the lease in the
    /// background and exits the process once leadership is lost.
    pub async fn lead(mut self) -> Arc<Leadership> {
        let leadership = Arc::new(Leadership::new(self.timing.renew_deadline));
        loop {
            let started = Instant::now();
            match self.round().await {
                Ok(true) => {
                    leadership.renewed_at(started);
                    break;
                }
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
        info!(identity = %self.me, lease = %self.name, "became the leader");
        let _ = RELEASE.set((self.api.clone(), self.name.clone(), self.me.clone()));
        let held = leadership.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.timing.retry).await;
                // Checked before the round too: after a freeze the deadline
                // may be long past, whatever the API server would say now.
                if !held.valid() {
                    warn!("could not renew the leader lease within {:?}; exiting", self.timing.renew_deadline);
                    std::process::exit(1);
                }
                let started = Instant::now();
                match self.round().await {
                    Ok(true) => held.renewed_at(started),
                    Ok(false) => {
                        warn!("lost the leader lease; exiting so a follower takes over");
                        std::process::exit(1);
                    }
                    Err(e) => warn!("cannot renew the leader lease: {e}"),
                }
            }
        });
        leadership
    }
}

/// Gives the lease up (on SIGTERM), so a follower need not wait for it to
/// expire. Best effort, bounded: the lease expires anyway.
pub async fn release() {
    let Some((api, name, me)) = RELEASE.get() else { return };
    let give_up = async {
        let mut lease = api.get(name).await?;
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(me.as_str()) {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
        }
        api.replace(name, &PostParams::default(), &lease).await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(2), give_up).await {
        Ok(Ok(())) => info!(lease = %name, "released the leader lease"),
        Ok(Err(e)) => warn!("cannot release the leader lease: {e}"),
        Err(_) => warn!("cannot release the leader lease: timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(1_000_000).unwrap())),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_an_own_lease_renewed() {
        assert_eq!(decide(None, "a", Duration::ZERO), LeaseAction::Create);
        assert_eq!(decide(Some(&lease("a", 15)), "a", Duration::ZERO), LeaseAction::Renew);
    }

    #[test]
    fn another_holders_lease_is_taken_over_only_after_it_stood_unchanged_for_its_duration() {
        let held = lease("b", 15);
        assert_eq!(decide(Some(&held), "a", Duration::from_secs(14)), LeaseAction::Follow { holder: "b".into() });
        assert_eq!(decide(Some(&held), "a", Duration::from_secs(15)), LeaseAction::TakeOver);
        // Wall clocks do not enter: a renew time far in the past means
        // nothing until this replica has watched it stand still.
        assert_eq!(decide(Some(&held), "a", Duration::ZERO), LeaseAction::Follow { holder: "b".into() });
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        assert_eq!(decide(Some(&lease("", 1)), "a", Duration::ZERO), LeaseAction::TakeOver);
    }

    #[test]
    fn the_renew_deadline_ends_before_the_lease_could_be_taken_over() {
        let t = Timing::for_lease(Duration::from_secs(15));
        assert!(t.renew_deadline < t.lease && t.retry < t.renew_deadline);
        assert_eq!((t.renew_deadline, t.retry), (Duration::from_secs(10), Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_turns_invalid_once_the_renew_deadline_passes_without_renewal() {
        let l = Leadership::new(Duration::from_secs(10));
        assert!(!l.valid(), "not leading before the first renewal");
        l.renewed_at(Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(l.valid());
        // As after a SIGSTOP: the clock moved on, no renewal happened.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!l.valid());
    }
}
