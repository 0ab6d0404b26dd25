//! Sample data shared by the stages' tests.

use odds_contracts::{Odds, OddsUpdate};

/// A valid update of `event_id` at `version` (teams "Home"/"Away", market 1X2, odds
/// 2.1 / 3.3 / 3.6, stamped now). Tests change the fields they care about.
pub fn sample_update(event_id: &str, version: u64) -> OddsUpdate {
    sample_update_in(event_id, "1X2", version)
}

/// [`sample_update`] in another market.
pub fn sample_update_in(event_id: &str, market: &str, version: u64) -> OddsUpdate {
    OddsUpdate {
        event_id: event_id.into(),
        home_team: "Home".into(),
        away_team: "Away".into(),
        market: market.into(),
        odds: Odds {
            home: 2.1,
            draw: 3.3,
            away: 3.6,
        },
        updated_at: chrono::Utc::now(),
        source: "test".into(),
        version,
        ingested_at: None,
    }
}
