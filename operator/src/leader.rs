//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas are safe.
//!
//! The rules are client-go's (`tools/leaderelection`), the ones every Kubernetes controller
//! follows, written out here because they fit on a page and are tested against the
//! in-memory API with a paused clock:
//! - A candidate judges expiry by its own clock: a Lease is free once its record (holder,
//!   renew time, resourceVersion) has not changed for `lease_duration` since this candidate
//!   first saw it. The holder's `renewTime` is never compared with the local clock, so clock
//!   skew between nodes cannot shorten a lease.
//! - The holder must renew within `renew_deadline` (shorter than `lease_duration`) counted
//!   from when the write of its last successful acquisition or renewal was sent, not from
//!   when its answer arrived: the API server may have recorded the write at any moment after
//!   it was sent, and a standby may have seen it at once. Each attempt is cut off at that
//!   deadline. A holder that cannot renew in time stops leading before any standby may take
//!   over: standbys wait `lease_duration` from when they saw that write, which was recorded
//!   after it was sent.
//! - Every write carries the `resourceVersion` it read, so two candidates racing for the same
//!   Lease cannot both win (the loser gets a 409 Conflict).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use prometheus::IntGauge;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Who campaigns for which Lease, and the timing rules.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a standby waits after the Lease last changed before taking it over.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Time between attempts (campaign and renewal).
    pub retry_period: Duration,
}

/// Timing that would let two leaders overlap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("renew deadline ({renew:?}) must be shorter than the lease duration ({lease:?})")]
    RenewDeadline { renew: Duration, lease: Duration },
    #[error("retry period ({retry:?}) must be well below the renew deadline ({renew:?}): at most 1/1.2 of it")]
    RetryPeriod { retry: Duration, renew: Duration },
}

impl LeaseConfig {
    /// The operator's defaults (client-go's: 15 s lease, 10 s renew deadline, 2 s retry).
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        Self {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks client-go's constraints on the timing.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.renew_deadline >= self.lease_duration {
            return Err(ConfigError::RenewDeadline {
                renew: self.renew_deadline,
                lease: self.lease_duration,
            });
        }
        if self.retry_period.mul_f64(1.2) >= self.renew_deadline {
            return Err(ConfigError::RetryPeriod {
                retry: self.retry_period,
                renew: self.renew_deadline,
            });
        }
        Ok(())
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// The parts of a Lease whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    lease_duration_seconds: Option<i32>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time,
            lease_duration_seconds: spec.lease_duration_seconds,
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// One replica's view of the Lease: the last record it saw and when, by its own clock.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Record, Instant)>,
    /// When the write of the last successful acquisition or renewal was sent.
    written: Option<Instant>,
    /// `odds_operator_leader`: 1 while this replica leads.
    gauge: Option<IntGauge>,
}

impl Elector {
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Self {
            api,
            config,
            observed: None,
            written: None,
            gauge: None,
        }
    }

    /// Reports leadership in `gauge` (1 while leading, 0 otherwise).
    pub fn with_gauge(mut self, gauge: IntGauge) -> Self {
        gauge.set(0);
        self.gauge = Some(gauge);
        self
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// When the write of the last successful acquisition or renewal was sent: the Lease is
    /// this replica's from then on for `renew_deadline` at most.
    pub fn written_at(&self) -> Option<Instant> {
        self.written
    }

    fn leading(&self, leading: bool) {
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::from(leading));
        }
    }

    fn observe(&mut self, record: Record) {
        if self.observed.as_ref().map(|(r, _)| r) != Some(&record) {
            self.observed = Some((record, Instant::now()));
        }
    }

    /// One attempt to become, or stay, the leader. `Ok(true)`: this replica leads.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.config.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let sent = Instant::now();
            let created = self.api.create(&PostParams::default(), &lease).await;
            return self.after_write(created, sent);
        };
        let record = Record::of(&lease);
        self.observe(record.clone());
        let mine = record.holder.as_deref() == Some(self.config.identity.as_str());
        if !mine {
            if let (Some(_), Some((_, seen))) = (&record.holder, &self.observed) {
                let seconds = record
                    .lease_duration_seconds
                    .unwrap_or(self.config.duration_seconds());
                let valid_for = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
                if *seen + valid_for > Instant::now() {
                    return Ok(false);
                }
            }
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !mine {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.config.duration_seconds());
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        let sent = Instant::now();
        let replaced = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await;
        self.after_write(replaced, sent)
    }

    /// The outcome of writing the Lease (sent at `sent`): `Ok(true)` when this replica now
    /// holds it, `Ok(false)` when another writer came first (409).
    fn after_write(
        &mut self,
        result: Result<Lease, kube::Error>,
        sent: Instant,
    ) -> Result<bool, kube::Error> {
        match result {
            Ok(written) => {
                self.observe(Record::of(&written));
                self.written = Some(sent);
                Ok(true)
            }
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once instead of waiting.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        // Called once the controller stopped: this replica leads no more, whatever the
        // Lease write below meets.
        self.leading(false);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Campaigns until this replica leads (`true`) or `shutdown` (`false`). Each attempt is cut
/// off after the renew deadline, so a hanging request cannot stall the campaign.
pub async fn acquire(elector: &mut Elector, shutdown: &CancellationToken) -> bool {
    loop {
        let limit = elector.config.renew_deadline;
        let attempt = tokio::time::timeout(limit, elector.try_acquire_or_renew());
        tokio::select! {
            () = shutdown.cancelled() => return false,
            result = attempt => match result {
                Ok(Ok(true)) => {
                    elector.leading(true);
                    return true;
                }
                Ok(Ok(false)) => tracing::debug!(lease = %elector.config.name, "another replica leads"),
                Ok(Err(error)) => tracing::warn!(%error, "cannot read or write the leader Lease"),
                Err(_) => tracing::warn!("leader Lease request timed out"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(elector.config.retry_period) => {}
        }
    }
}

/// Renews the Lease every retry period until `stop`; cancels `lost` (and returns) as soon as
/// leadership cannot be kept: another holder, or no successful renewal within the renew
/// deadline of when the last successful acquisition's or renewal's write was sent. Call it
/// right after [`acquire`] returned true, and keep it running until the controller has
/// drained (not just until SIGTERM), so in-flight reconciles finish under a valid lease.
pub async fn keep(
    mut elector: Elector,
    stop: CancellationToken,
    lost: CancellationToken,
) -> Elector {
    // Valid from when the acquiring write was sent, not from when `acquire` returned: its
    // answer may have come late, while a standby already saw the Lease change.
    let Some(mut written) = elector.written else {
        tracing::error!("keeping a Lease that was never acquired: stepping down");
        elector.leading(false);
        lost.cancel();
        return elector;
    };
    loop {
        let deadline = written + elector.config.renew_deadline;
        let next = (Instant::now() + elector.config.retry_period).min(deadline);
        tokio::select! {
            () = stop.cancelled() => return elector,
            () = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= deadline {
            tracing::error!("leader Lease not renewed within the renew deadline: stepping down");
            elector.leading(false);
            lost.cancel();
            return elector;
        }
        match tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => written = elector.written.unwrap_or(written),
            Ok(Ok(false)) => {
                tracing::error!("leadership lost to another replica");
                elector.leading(false);
                lost.cancel();
                return elector;
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot renew the leader Lease"),
            Err(_) => tracing::warn!("renewing the leader Lease timed out"),
        }
    }
}
