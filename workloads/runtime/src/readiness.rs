//! Readiness made of named checks, each flipped by the part of the service that knows.
//!
//! A service is ready only while every dependency it needs is; `/readyz` lists which are not,
//! so `kubectl describe pod` shows *why* a pod is out of rotation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Default, Debug)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// A readiness with the given checks, all initially not ready.
    pub fn new(checks: &[&'static str]) -> Readiness {
        let readiness = Readiness::default();
        for check in checks {
            readiness.set(check, false);
        }
        readiness
    }

    pub fn set(&self, check: &'static str, ready: bool) {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(check, ready);
    }

    pub fn is_ready(&self) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .all(|ready| *ready)
    }

    /// Every check and its state.
    pub fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn ready_only_when_every_check_is() {
        let r = Readiness::new(&["kafka", "supplier"]);
        assert!(!r.is_ready());
        r.set("kafka", true);
        assert!(!r.is_ready());
        r.set("supplier", true);
        assert!(r.is_ready());
        r.set("kafka", false);
        assert!(!r.is_ready());
        assert_eq!(r.snapshot().get("kafka"), Some(&false));
    }
}
