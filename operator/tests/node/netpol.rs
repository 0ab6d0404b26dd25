//! NetworkPolicy semantics, as a CNI that enforces them applies them to one namespace: a
//! connection passes when the source pod's egress and the destination pod's ingress both
//! allow it. A pod no policy selects (for that direction) is not restricted.
//!
//! Only what the operator's policies use is modelled: `podSelector.matchLabels`, peers
//! without a selector (anywhere), numeric TCP ports; anything else is refused loudly, so a
//! policy this cannot judge never passes by accident.

use serde_json::Value;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// One side of a connection: a pod's labels, or `None` for an address outside any pod
/// (no policy selects it, no pod selector matches it).
pub type Side<'a> = Option<&'a Labels>;

pub struct Policies(pub Vec<Value>);

impl Policies {
    /// The NetworkPolicies among `objects`.
    pub fn of(objects: &[Value]) -> Policies {
        Policies(
            objects
                .iter()
                .filter(|o| o["kind"] == "NetworkPolicy")
                .cloned()
                .collect(),
        )
    }

    /// Whether a TCP connection from `from` to port `port` of `to` passes.
    pub fn allows(&self, from: Side, to: Side, port: u16) -> bool {
        self.direction(from, "Egress", "egress", "to", to, port)
            && self.direction(to, "Ingress", "ingress", "from", from, port)
    }

    /// The policies that select `pod` for `kind`: if there are none, `pod` is unrestricted;
    /// otherwise one of their rules must admit the peer on the port.
    fn direction(
        &self,
        pod: Side,
        kind: &str,
        rules: &str,
        peers: &str,
        peer: Side,
        port: u16,
    ) -> bool {
        let Some(pod) = pod else { return true };
        let applying: Vec<&Value> = self
            .0
            .iter()
            .filter(|p| types(p).iter().any(|t| t == kind))
            .filter(|p| selects(&p["spec"]["podSelector"], pod))
            .collect();
        if applying.is_empty() {
            return true;
        }
        applying.iter().any(|policy| {
            policy["spec"][rules]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| ports_match(&rule["ports"], port) && peers_match(&rule[peers], peer))
        })
    }
}

fn types(policy: &Value) -> Vec<String> {
    match policy["spec"]["policyTypes"].as_array() {
        Some(types) => types
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        // Kubernetes' default: Ingress, and Egress when egress rules are given.
        None => {
            let mut types = vec!["Ingress".to_string()];
            if policy["spec"]["egress"].is_array() {
                types.push("Egress".into());
            }
            types
        }
    }
}

fn selects(selector: &Value, labels: &Labels) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not modelled: {selector}"
    );
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn ports_match(ports: &Value, port: u16) -> bool {
    let Some(ports) = ports.as_array() else {
        return true; // no ports: every port
    };
    ports.iter().any(|p| {
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        assert!(
            p["port"].is_u64() || p["port"].is_null(),
            "named ports are not modelled: {p}"
        );
        protocol == "TCP" && p["port"].as_u64().is_none_or(|n| n == u64::from(port))
    })
}

fn peers_match(peers: &Value, peer: Side) -> bool {
    let Some(peers) = peers.as_array() else {
        return true; // no peers: anywhere
    };
    if peers.is_empty() {
        return true;
    }
    peers.iter().any(|p| {
        assert!(
            p.get("ipBlock").is_none() && p.get("namespaceSelector").is_none(),
            "only same-namespace pod selectors are modelled: {p}"
        );
        peer.is_some_and(|labels| selects(&p["podSelector"], labels))
    })
}
