//! Lease-based leader election against the in-memory API: one leader at a time, renewal,
//! takeover after expiry, release on shutdown.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube_fake_client::ClientBuilder;
use odds_operator::leader::{release, try_acquire, LeaseConfig};
use std::time::Duration;

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "odds-operator-leader".into(),
        namespace: "ops".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

async fn api() -> Api<Lease> {
    Api::namespaced(ClientBuilder::new().build().await.unwrap(), "ops")
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_800_000_000 + seconds)
}

#[tokio::test]
async fn only_one_replica_leads_until_the_lease_expires() {
    let api = api().await;
    let (a, b) = (config("pod-a"), config("pod-b"));
    assert!(
        try_acquire(&api, &a, at(0)).await.unwrap(),
        "first candidate creates the Lease"
    );
    assert!(
        !try_acquire(&api, &b, at(1)).await.unwrap(),
        "held Lease is not taken"
    );
    assert!(
        try_acquire(&api, &a, at(10)).await.unwrap(),
        "holder renews"
    );
    assert!(
        !try_acquire(&api, &b, at(20)).await.unwrap(),
        "renewed at 10, valid until 25"
    );
    assert!(
        try_acquire(&api, &b, at(26)).await.unwrap(),
        "expired Lease is taken over"
    );
    let lease = api.get("odds-operator-leader").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert!(
        !try_acquire(&api, &a, at(27)).await.unwrap(),
        "the old leader is now a follower"
    );
}

#[tokio::test]
async fn released_lease_is_taken_at_once() {
    let api = api().await;
    let (a, b) = (config("pod-a"), config("pod-b"));
    assert!(try_acquire(&api, &a, at(0)).await.unwrap());
    release(&api, &b).await.unwrap();
    assert!(
        !try_acquire(&api, &b, at(1)).await.unwrap(),
        "only the holder can release"
    );
    release(&api, &a).await.unwrap();
    assert!(try_acquire(&api, &b, at(2)).await.unwrap());
}

#[tokio::test]
async fn a_stale_write_loses_the_race() {
    let api = api().await;
    let a = config("pod-a");
    assert!(try_acquire(&api, &a, at(0)).await.unwrap());
    // Another writer changes the Lease between our read and write: a replace carrying the
    // old resourceVersion must be refused with 409.
    let mut stale = api.get("odds-operator-leader").await.unwrap();
    assert!(try_acquire(&api, &config("pod-b"), at(100)).await.unwrap());
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-a".into());
    let error = api
        .replace("odds-operator-leader", &Default::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409),
        "{error}"
    );
}
