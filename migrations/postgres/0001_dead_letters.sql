-- Messages and rows that could not be delivered, with the reason.
CREATE TABLE dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    route           TEXT    NOT NULL,
    direction       TEXT    NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    source          TEXT    NOT NULL,   -- topic, queue or query name
    payload         BYTEA   NOT NULL,   -- the raw bytes, exactly as received
    headers         TEXT    NOT NULL DEFAULT '{}',  -- JSON: broker, qos, retain, received_at, …
    error_kind      TEXT    NOT NULL,   -- decode | convert | rejected | …
    error           TEXT    NOT NULL,
    sqlstate        TEXT,
    attempts        BIGINT  NOT NULL DEFAULT 1,
    first_failed_at TEXT    NOT NULL,   -- RFC 3339, UTC, milliseconds: compares as text
    last_failed_at  TEXT    NOT NULL
);

CREATE INDEX dead_letters_by_route ON dead_letters (route, id);
