//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas are safe.
//!
//! A small hand-written loop rather than a crate: the rules fit on a page and are tested here
//! against the in-memory API. The holder renews every `renew_every`; anyone may take the Lease
//! over once `renewTime + leaseDurationSeconds` has passed. Every write carries the
//! `resourceVersion` it read, so two candidates racing for the same Lease cannot both win
//! (the loser gets a 409 Conflict and stays a follower).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Who campaigns for which Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (well below `lease_duration`).
    pub renew_every: Duration,
}

/// One attempt to become, or stay, the leader at time `now`. `Ok(true)`: this replica leads.
pub async fn try_acquire(
    api: &Api<Lease>,
    config: &LeaseConfig,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let duration_seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != config.identity {
        let expires = spec.renew_time.as_ref().map(|t| {
            let seconds = spec.lease_duration_seconds.unwrap_or(duration_seconds);
            t.0 + SignedDuration::from_secs(i64::from(seconds))
        });
        let held = !holder.is_empty() && expires.is_some_and(|e| e > now);
        if held {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_seconds);
    // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if is_conflict(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Gives the Lease up on shutdown so a standby takes over at once instead of waiting.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if is_conflict(&error) => Ok(()),
        Err(error) => Err(error),
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Campaigns until this replica leads (or `shutdown`); returns false on shutdown.
pub async fn acquire(api: &Api<Lease>, config: &LeaseConfig, shutdown: &CancellationToken) -> bool {
    loop {
        match try_acquire(api, config, Timestamp::now()).await {
            Ok(true) => return true,
            Ok(false) => tracing::debug!(lease = %config.name, "another replica leads"),
            Err(error) => tracing::warn!(%error, "cannot read or write the leader Lease"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(config.renew_every) => {}
        }
    }
}

/// Renews the Lease until `shutdown`; cancels `lost` when leadership cannot be kept (another
/// holder, or no successful renewal within the lease duration).
pub async fn keep(
    api: Api<Lease>,
    config: LeaseConfig,
    shutdown: CancellationToken,
    lost: CancellationToken,
) {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.renew_every) => {}
        }
        match try_acquire(&api, &config, Timestamp::now()).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("leadership lost to another replica");
                lost.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the leader Lease");
                if last_renewal.elapsed() >= config.lease_duration {
                    tracing::error!("leader Lease expired without renewal");
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
