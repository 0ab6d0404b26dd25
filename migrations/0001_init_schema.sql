-- The platform's base schema: users, their wallets, bets, and the ledger that moves money.
-- Money is integer minor units (cents) everywhere; odds are NUMERIC. Never float.

CREATE TABLE IF NOT EXISTS users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         TEXT        NOT NULL UNIQUE CHECK (email LIKE '%_@_%'),
    display_name  TEXT        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS wallets (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    currency        CHAR(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance_minor   BIGINT      NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, currency)
);

CREATE TABLE IF NOT EXISTS bets (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         BIGINT        NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    wallet_id       BIGINT        NOT NULL REFERENCES wallets (id) ON DELETE RESTRICT,
    event_id        TEXT          NOT NULL,
    market          TEXT          NOT NULL,
    selection       TEXT          NOT NULL CHECK (selection IN ('home', 'draw', 'away')),
    stake_minor     BIGINT        NOT NULL CHECK (stake_minor > 0),
    odds            NUMERIC(10,3) NOT NULL CHECK (odds > 1),
    -- The odds version the bet was priced at, so a settled bet can be traced to its update.
    odds_version    BIGINT        NOT NULL CHECK (odds_version >= 1),
    status          TEXT          NOT NULL DEFAULT 'open'
                                  CHECK (status IN ('open', 'won', 'lost', 'void')),
    placed_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),
    settled_at      TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS bets_user_placed_idx ON bets (user_id, placed_at DESC);
CREATE INDEX IF NOT EXISTS bets_event_idx ON bets (event_id) WHERE status = 'open';

-- Append-only: a balance is the sum of its wallet's entries; corrections are new entries.
CREATE TABLE IF NOT EXISTS ledger_entries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id       BIGINT      NOT NULL REFERENCES wallets (id) ON DELETE RESTRICT,
    bet_id          BIGINT      REFERENCES bets (id) ON DELETE RESTRICT,
    kind            TEXT        NOT NULL
                                CHECK (kind IN ('deposit', 'withdrawal', 'stake', 'payout', 'refund')),
    amount_minor    BIGINT      NOT NULL CHECK (amount_minor <> 0),
    -- Lets a retried request post once: the caller supplies a key per logical operation.
    idempotency_key TEXT        NOT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ledger_wallet_created_idx ON ledger_entries (wallet_id, created_at);
