//! The ports the stages listen on and the address of Strimzi's Kafka bootstrap Service.
//!
//! A stage's default listen address, the operator's container ports, probes, Services and
//! NetworkPolicies, and the chart must agree on these numbers or pods run but nothing
//! reaches them; so they are written once, here, and the chart's test checks its own port
//! against the operator's default.

use std::net::{Ipv4Addr, SocketAddr};

/// Every binary's `/healthz`, `/readyz` and `/metrics` (`HTTP_ADDR`).
pub const OPS: u16 = 9000;
/// odds-service's REST API and `/ws/odds` (`LISTEN_ADDR`).
pub const API: u16 = 8080;
/// supplier-simulator's WebSocket feed (`LISTEN_ADDR`).
pub const SIMULATOR: u16 = 8090;
/// Strimzi's plain (unauthenticated) Kafka listener.
pub const KAFKA_PLAIN: u16 = 9092;

/// `0.0.0.0:port`: what a server in a pod listens on.
pub fn any_address(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// `ws://127.0.0.1:port{path}`: a WebSocket server on this machine, the default of a client
/// run next to it (ingest reading the simulator, `odds-demo watch` reading odds-service).
pub fn loopback_ws_url(port: u16, path: &str) -> String {
    format!(
        "ws://{}{path}",
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    )
}

/// The bootstrap address of Strimzi cluster `cluster`: its `-kafka-bootstrap` Service on
/// `port`, namespace-qualified when the client runs in another namespace (KEDA's operator).
pub fn strimzi_bootstrap(
    cluster: &str,
    namespace: Option<&str>,
    port: impl std::fmt::Display,
) -> String {
    match namespace {
        Some(namespace) => format!("{cluster}-kafka-bootstrap.{namespace}.svc:{port}"),
        None => format!("{cluster}-kafka-bootstrap:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_kubernetes_expects() {
        assert_eq!(any_address(OPS).to_string(), "0.0.0.0:9000");
        assert_eq!(
            strimzi_bootstrap("k", None, KAFKA_PLAIN),
            "k-kafka-bootstrap:9092"
        );
        assert_eq!(
            strimzi_bootstrap("k", Some("kafka"), 9093),
            "k-kafka-bootstrap.kafka.svc:9093"
        );
    }

    #[test]
    fn loopback_urls_name_this_machine() {
        assert_eq!(loopback_ws_url(SIMULATOR, "/ws"), "ws://127.0.0.1:8090/ws");
        assert_eq!(
            loopback_ws_url(API, "/ws/odds"),
            "ws://127.0.0.1:8080/ws/odds"
        );
    }
}
