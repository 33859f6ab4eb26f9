-- Leases: one holder at a time for each outbound route and the dead-letter mirror.
-- Times are milliseconds since 1970 on the state store's clock, never an instance's.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,   -- `outbound:ROUTE` or `mirror`
    holder     TEXT NOT NULL,      -- the holding process: `INSTANCE#PROCESS`
    instance   TEXT NOT NULL,      -- its instance name, for people
    epoch      BIGINT NOT NULL,    -- fencing token: bumped each time another holder takes over
    since      BIGINT NOT NULL,    -- when this holder took it
    expires_at BIGINT NOT NULL     -- when another may take it unless renewed
);

-- The processes that have run on this store, for `mqdb status`.
CREATE TABLE instances (
    holder     TEXT PRIMARY KEY,   -- `INSTANCE#PROCESS`, as in leases
    instance   TEXT NOT NULL,
    version    TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL,    -- refreshed while it runs
    stopped_at BIGINT              -- set when it stops cleanly
);
