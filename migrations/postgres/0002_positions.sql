-- Where each outbound route has got to: the track values of the last row confirmed.
CREATE TABLE positions (
    route      TEXT PRIMARY KEY,
    position   TEXT NOT NULL,      -- JSON array of the track values, as text
    updated_at TEXT NOT NULL       -- RFC 3339, UTC
);
