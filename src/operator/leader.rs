//! Leader election over a `coordination.k8s.io/v1` Lease, so several
//! operator replicas can run and exactly one reconciles. kube-rs has no
//! election of its own; this is the client-go protocol in small: hold the
//! lease by renewing it, take it over only once it expired, and exit when
//! it is lost so the pod restarts as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tracing::{info, warn};

/// What to do with the lease, given what it says now.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseAction {
    Create,
    Renew,
    TakeOver,
    /// Someone else holds an unexpired lease.
    Follow {
        holder: String,
    },
}

/// `now_s` and the lease's renew time in seconds since the epoch.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now_s: i64) -> LeaseAction {
    let Some(spec) = spec else { return LeaseAction::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return LeaseAction::Renew;
    }
    let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
    let duration = spec.lease_duration_seconds.unwrap_or(15) as i64;
    if holder.is_empty() || now_s >= renewed + duration {
        LeaseAction::TakeOver
    } else {
        LeaseAction::Follow { holder }
    }
}

pub struct Election {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

impl Election {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration) -> Election {
        Election { api: Api::namespaced(client, namespace), name: name.into(), me: me.into(), duration }
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: `Ok(true)` while this replica leads.
    pub async fn round(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now().as_second();
        match decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.me, now) {
            LeaseAction::Create => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(self.spec(0)),
                };
                Ok(self.api.create(&PostParams::default(), &lease).await.is_ok())
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
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            LeaseAction::Follow { .. } => Ok(false),
        }
    }

    /// Waits until this replica leads, then keeps the lease in the
    /// background; exits the process if it is lost.
    pub async fn lead(self) {
        let every = self.duration / 3;
        loop {
            match self.round().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(every).await;
        }
        info!(identity = %self.me, lease = %self.name, "became the leader");
        tokio::spawn(async move {
            let mut failing_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(every).await;
                match self.round().await {
                    Ok(true) => failing_since = None,
                    Ok(false) => {
                        warn!("lost the leader lease; exiting so a follower takes over");
                        std::process::exit(1);
                    }
                    Err(e) => {
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        warn!("cannot renew the leader lease: {e}");
                        if since.elapsed() >= self.duration {
                            warn!("leader lease expired; exiting");
                            std::process::exit(1);
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_s: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_s).unwrap())),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_an_own_lease_renewed() {
        assert_eq!(decide(None, "a", 100), LeaseAction::Create);
        assert_eq!(decide(Some(&lease("a", 90, 15)), "a", 100), LeaseAction::Renew);
    }

    #[test]
    fn another_holders_lease_is_taken_over_only_once_expired() {
        assert_eq!(decide(Some(&lease("b", 90, 15)), "a", 100), LeaseAction::Follow { holder: "b".into() });
        assert_eq!(decide(Some(&lease("b", 80, 15)), "a", 100), LeaseAction::TakeOver);
    }
}
