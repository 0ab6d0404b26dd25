-- Read models maintained by odds-processor and served by odds-service.

-- One row per event: the newest version seen. Writers replace a row only with a strictly
-- newer version, so redelivery and out-of-order input never move it backwards.
CREATE TABLE IF NOT EXISTS odds_current (
    event_id    TEXT          PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 64),
    home_team   TEXT          NOT NULL,
    away_team   TEXT          NOT NULL,
    market      TEXT          NOT NULL,
    home_odds   NUMERIC       NOT NULL CHECK (home_odds > 1),
    draw_odds   NUMERIC       NOT NULL CHECK (draw_odds > 1),
    away_odds   NUMERIC       NOT NULL CHECK (away_odds > 1),
    version     BIGINT        NOT NULL CHECK (version >= 1),
    updated_at  TIMESTAMPTZ   NOT NULL,
    source      TEXT          NOT NULL DEFAULT '',
    -- When this row was written: with updated_at, shows pipeline delay per event.
    stored_at   TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- Every version of every event, once. The unique key makes replays harmless
-- (INSERT ... ON CONFLICT DO NOTHING) and serves "history of one event, newest first".
CREATE TABLE IF NOT EXISTS odds_history (
    event_id    TEXT          NOT NULL,
    version     BIGINT        NOT NULL CHECK (version >= 1),
    market      TEXT          NOT NULL,
    home_odds   NUMERIC       NOT NULL,
    draw_odds   NUMERIC       NOT NULL,
    away_odds   NUMERIC       NOT NULL,
    updated_at  TIMESTAMPTZ   NOT NULL,
    source      TEXT          NOT NULL DEFAULT '',
    stored_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CONSTRAINT odds_history_event_version_key UNIQUE (event_id, version)
);
-- The unique index on (event_id, version) already answers "WHERE event_id = $1 ORDER BY
-- version DESC LIMIT n" with a backward index scan, so no second index is needed.
