-- Current odds per (event, market), history unique per (event, market, version).
--
-- An event has several markets (`1X2`, `HT_1X2`); 0002 kept one current row per event, so an
-- update of one market replaced the other's odds. Versions rise per event across all of its
-- markets, so keys that add the market never merge two rows that 0002 kept apart: existing
-- rows stay valid as they are.

ALTER TABLE odds_current DROP CONSTRAINT odds_current_pkey;
ALTER TABLE odds_current ADD CONSTRAINT odds_current_pkey PRIMARY KEY (event_id, market);

ALTER TABLE odds_history DROP CONSTRAINT odds_history_event_version_key;
-- Also serves "history of one event, newest first": one backward scan per market, each
-- stopping at the limit, merged (see odds-service's history query), so no second index.
ALTER TABLE odds_history
    ADD CONSTRAINT odds_history_event_market_version_key UNIQUE (event_id, market, version);
