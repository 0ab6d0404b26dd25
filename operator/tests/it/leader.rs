//! Lease-based leader election against the in-memory API: one leader at a time, renewal,
//! takeover after expiry judged by the standby's own clock, release on shutdown, and, with a
//! paused clock, no overlap of two leaders when the leader's network fails.

use crate::harness::{client_of, Network};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube_fake_client::ClientBuilder;
use odds_operator::leader::{acquire, keep, ConfigError, Elector, LeaseConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "odds-operator-leader";

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig::new(LEASE.into(), "default".into(), identity.into())
}

async fn fake() -> kube::Client {
    ClientBuilder::new().build().await.unwrap()
}

fn elector(api: &kube::Client, identity: &str) -> (Elector, Network) {
    let (client, network) = client_of(api);
    (
        Elector::new(Api::namespaced(client, "default"), config(identity)),
        network,
    )
}

fn leases(api: &kube::Client) -> Api<Lease> {
    Api::namespaced(api.clone(), "default")
}

async fn lease(api: &kube::Client) -> LeaseSpec {
    leases(api).get(LEASE).await.unwrap().spec.unwrap()
}

/// Writes `lease` back with `edit` made to its spec, as another writer would.
async fn write_lease(
    api: &kube::Client,
    mut lease: Lease,
    edit: impl FnOnce(&mut LeaseSpec),
) -> Result<Lease, kube::Error> {
    edit(lease.spec.as_mut().unwrap());
    leases(api)
        .replace(LEASE, &Default::default(), &lease)
        .await
}

#[test]
fn timing_that_could_overlap_is_refused() {
    assert_eq!(config("a").check(), Ok(()));
    let mut c = config("a");
    c.renew_deadline = c.lease_duration;
    assert!(matches!(c.check(), Err(ConfigError::RenewDeadline { .. })));
    let mut c = config("a");
    c.retry_period = Duration::from_secs(9);
    assert!(matches!(c.check(), Err(ConfigError::RetryPeriod { .. })));
}

#[tokio::test(start_paused = true)]
async fn only_one_replica_leads_until_the_lease_expires_by_the_standbys_clock() {
    let api = fake().await;
    let (mut a, _) = elector(&api, "pod-a");
    let (mut b, _) = elector(&api, "pod-b");
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "first candidate creates the Lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "held Lease is not taken"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(a.try_acquire_or_renew().await.unwrap(), "holder renews");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b first sees the renewal now: valid for 15 s from now"
    );
    tokio::time::advance(Duration::from_secs(14)).await;
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "14 s by b's clock"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "unchanged for 16 s: taken over"
    );
    let spec = lease(&api).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "the old leader is now a follower"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renew_time_in_the_future_does_not_extend_the_lease() {
    let api = fake().await;
    // A holder whose clock runs an hour ahead wrote its lease, then died.
    let (mut ghost, _) = elector(&api, "ghost");
    assert!(ghost.try_acquire_or_renew().await.unwrap());
    let skewed = leases(&api).get(LEASE).await.unwrap();
    let ahead = MicroTime(Timestamp::now() + SignedDuration::from_hours(1));
    write_lease(&api, skewed, |spec| spec.renew_time = Some(ahead))
        .await
        .unwrap();

    let (mut b, _) = elector(&api, "pod-b");
    assert!(!b.try_acquire_or_renew().await.unwrap());
    tokio::time::advance(Duration::from_secs(16)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "expiry is judged by b's own observation, not the holder's renewTime"
    );
}

#[tokio::test(start_paused = true)]
async fn released_lease_is_taken_at_once() {
    let api = fake().await;
    let (mut a, _) = elector(&api, "pod-a");
    let (mut b, _) = elector(&api, "pod-b");
    assert!(a.try_acquire_or_renew().await.unwrap());
    b.release().await.unwrap();
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "only the holder can release"
    );
    a.release().await.unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn a_stale_write_loses_the_race() {
    let api = fake().await;
    let (mut a, _) = elector(&api, "pod-a");
    assert!(a.try_acquire_or_renew().await.unwrap());
    // Another writer changes the Lease between our read and write: a replace carrying the
    // old resourceVersion must be refused with 409.
    let stale = leases(&api).get(LEASE).await.unwrap();
    let fresh = leases(&api).get(LEASE).await.unwrap();
    write_lease(&api, fresh, |spec| {
        spec.holder_identity = Some("pod-b".into())
    })
    .await
    .unwrap();
    let error = write_lease(&api, stale, |spec| {
        spec.holder_identity = Some("pod-a".into())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409),
        "{error}"
    );
}

/// When each candidate led: `(identity, from, until)`; `until` is `None` while leading.
type Terms = Arc<Mutex<Vec<(String, Instant, Option<Instant>)>>>;

/// Runs one replica's election as `run` does: campaign, then renew until lost.
fn candidate(mut elector: Elector, terms: Terms, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let identity = elector.config().identity.clone();
        while acquire(&mut elector, &shutdown).await {
            let index = {
                let mut terms = terms.lock().unwrap();
                terms.push((identity.clone(), Instant::now(), None));
                terms.len() - 1
            };
            let lost = CancellationToken::new();
            elector = keep(elector, shutdown.clone(), lost.clone()).await;
            terms.lock().unwrap()[index].2 = Some(Instant::now());
            if !lost.is_cancelled() {
                return;
            }
        }
    });
}

fn assert_no_overlap(terms: &Terms) {
    let terms = terms.lock().unwrap().clone();
    for (i, (who, from, until)) in terms.iter().enumerate() {
        for (other, from2, until2) in terms.iter().skip(i + 1) {
            let ends_before =
                |until: &Option<Instant>, start: &Instant| until.is_some_and(|u| u < *start);
            assert!(
                ends_before(until, from2) || ends_before(until2, from),
                "{who} {from:?}..{until:?} overlaps {other} {from2:?}..{until2:?}"
            );
        }
    }
}

async fn failover(fault: fn(&Network)) -> Terms {
    let api = fake().await;
    let terms: Terms = Arc::default();
    let shutdown = CancellationToken::new();
    let (a, a_net) = elector(&api, "pod-a");
    let (b, _) = elector(&api, "pod-b");
    candidate(a, terms.clone(), shutdown.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    candidate(b, terms.clone(), shutdown.clone());
    tokio::time::sleep(Duration::from_secs(30)).await;
    fault(&a_net);
    tokio::time::sleep(Duration::from_secs(60)).await;
    a_net.heal();
    tokio::time::sleep(Duration::from_secs(60)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    terms
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_leader_steps_down_before_the_standby_takes_over() {
    // Requests that hang forever: only a per-attempt deadline notices.
    let terms = failover(Network::partition).await;
    let leaders: Vec<_> = terms.lock().unwrap().iter().map(|t| t.0.clone()).collect();
    assert_eq!(
        leaders,
        ["pod-a", "pod-b"],
        "b takes over, a stays a follower once healed"
    );
    assert_no_overlap(&terms);
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_steps_down_before_the_standby_takes_over() {
    let terms = failover(Network::refuse).await;
    let leaders: Vec<_> = terms.lock().unwrap().iter().map(|t| t.0.clone()).collect();
    assert_eq!(leaders, ["pod-a", "pod-b"]);
    assert_no_overlap(&terms);
}

#[tokio::test(start_paused = true)]
async fn the_renew_deadline_counts_from_when_the_acquiring_write_was_sent() {
    let api = fake().await;
    let terms: Terms = Arc::default();
    let shutdown = CancellationToken::new();
    let (a, a_net) = elector(&api, "pod-a");
    let (b, _) = elector(&api, "pod-b");
    // a's create reaches the API server at once (a standby can see the Lease from then on),
    // but its answer takes 9 s.
    a_net.slow("create", "leases", Duration::from_secs(9));
    let start = Instant::now();
    candidate(a, terms.clone(), shutdown.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    candidate(b, terms.clone(), shutdown.clone());
    // a learns it leads at 9 s, then its network fails: it cannot renew.
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    assert_eq!(terms.lock().unwrap().len(), 1, "a leads");
    a_net.partition();
    tokio::time::sleep(Duration::from_secs(60)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let terms_now = terms.lock().unwrap().clone();
    let leaders: Vec<_> = terms_now.iter().map(|t| t.0.clone()).collect();
    assert_eq!(leaders, ["pod-a", "pod-b"]);
    assert_no_overlap(&terms);
    let a_until = terms_now[0].2.expect("a stepped down");
    assert!(
        a_until <= start + Duration::from_secs(10),
        "a leads at most the renew deadline (10 s) from when its write was sent, not from its answer: stepped down after {:?}",
        a_until - start
    );
}

#[tokio::test(start_paused = true)]
async fn the_leader_gauge_is_one_on_the_leader_only() {
    let api = fake().await;
    let gauge = |name: &str| prometheus::IntGauge::new(name, "leader").unwrap();
    let (a, a_net) = elector(&api, "pod-a");
    let (b, _) = elector(&api, "pod-b");
    let (a_gauge, b_gauge) = (gauge("a"), gauge("b"));
    let (mut a, mut b) = (a.with_gauge(a_gauge.clone()), b.with_gauge(b_gauge.clone()));
    let never = CancellationToken::new();
    assert!(acquire(&mut a, &never).await);
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert_eq!((a_gauge.get(), b_gauge.get()), (1, 0));
    // a cannot renew: it steps down, and says so.
    a_net.partition();
    let lost = CancellationToken::new();
    let mut a = keep(a, never.clone(), lost.clone()).await;
    assert!(lost.is_cancelled());
    assert_eq!(a_gauge.get(), 0);
    assert!(acquire(&mut b, &never).await);
    assert_eq!((a_gauge.get(), b_gauge.get()), (0, 1));
    // Released on shutdown: no longer the leader.
    a_net.heal();
    assert!(!a.try_acquire_or_renew().await.unwrap());
    b.release().await.unwrap();
    assert_eq!(b_gauge.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_blocked_when_the_lease_is_lost_never_sends_its_next_write() {
    use crate::fixtures::sample;
    use crate::harness::harness;
    use odds_operator::controller::{reconcile, Error};
    use std::sync::atomic::Ordering;

    let h = harness(sample(), true).await;
    h.roll_out().await;
    // The operator leads, renewing the Lease over its own connection to the API server.
    let (mut elector, lease_net) = elector(&h.client, "pod-a");
    let never = CancellationToken::new();
    assert!(acquire(&mut elector, &never).await);
    let lost = h.ctx.lost_leadership.clone();
    let keeper = tokio::spawn(keep(elector, never.clone(), lost.clone()));
    // A reconcile that has writes to make (the ingest Deployment grows) stalls on its first
    // Deployment read, right before the apply that would write it.
    h.patch_pipeline(serde_json::json!({"spec": {"ingest": {"replicas": 2}}}))
        .await;
    let gate = h.hold("get", "deployments");
    let pipeline = Arc::new(h.pipeline().await);
    h.operator.store(true, Ordering::SeqCst);
    let reconciling = tokio::spawn(reconcile(pipeline, h.ctx.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The reconcile's requests (the Lease's go through the same recording layer).
    let calls = || -> Vec<_> {
        let calls = h.calls.lock().unwrap().clone();
        calls.into_iter().filter(|c| c.2 != "leases").collect()
    };
    let blocked = calls();
    assert_eq!(
        blocked.last().map(|c| (c.0.as_str(), c.2.as_str())),
        Some(("get", "deployments")),
        "the reconcile waits for its Deployment read: {blocked:?}"
    );
    // The Lease cannot be renewed any more: leadership ends at the renew deadline.
    lease_net.partition();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(lost.is_cancelled(), "the leader stepped down");
    keeper.await.unwrap();
    // The API server answers the read now; a standby may already lead.
    gate.cancel();
    let result = reconciling.await.unwrap();
    assert!(matches!(result, Err(Error::NotLeader)), "{result:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after: Vec<_> = calls().into_iter().skip(blocked.len()).collect();
    assert!(
        after.is_empty(),
        "no request (no apply, no status patch, no event) after the loss: {after:?}"
    );
    let live = h.deployment("demo-ingest").await.unwrap();
    assert_eq!(crate::fixtures::replicas(&live), Some(1), "never applied");
}
