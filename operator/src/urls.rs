//! Addresses that arrive in Secrets as URLs: their host and port, which the NetworkPolicies
//! open ([`crate::build::networkpolicy`]) and the dereference reads ([`crate::observe`]), and
//! the Redis URL the freshness canary publishes to, which must never reach a log.
//!
//! A leaf module of its own so that building and observing can both use it without the
//! builders depending on the module that reads the cluster.

/// The pipeline's Redis URL, read from its Secret: where the freshness canary publishes its
/// figures ([`crate::canaries`]). It holds a credential, so it never shows in logs: its
/// `Debug` prints no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl(<from its Secret>)")
    }
}

/// The port of `url` (`scheme://[user[:password]@]host[:port][/...]`), or its scheme's
/// default.
pub fn url_port(url: &str) -> Option<u16> {
    url_host_port(url).map(|(_, port)| port)
}

/// The host and port of `url` (`scheme://[user[:password]@]host[:port][/...]`); the port is
/// the scheme's default when the URL names none. An IPv6 host keeps its brackets.
pub fn url_host_port(url: &str) -> Option<(&str, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    // An IPv6 literal is bracketed: the port follows the closing bracket.
    let after_host = host_port.rsplit(']').next()?;
    if let Some((_, port)) = after_host.rsplit_once(':') {
        let host = &host_port[..host_port.len() - port.len() - 1];
        return Some((host, port.parse().ok()?));
    }
    let port = match scheme {
        "redis" => 6379,
        "rediss" => 6380,
        "postgres" | "postgresql" => 5432,
        "ws" | "http" => 80,
        "wss" | "https" => 443,
        _ => return None,
    };
    Some((host_port, port))
}
