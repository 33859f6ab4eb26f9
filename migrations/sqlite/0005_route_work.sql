-- When each route last did work, per instance, for `mqdb status`.
-- Times are milliseconds since 1970 on the state store's clock.
CREATE TABLE route_work (
    route     TEXT NOT NULL,
    instance  TEXT NOT NULL,
    direction TEXT NOT NULL,     -- inbound | outbound
    work_at   BIGINT NOT NULL,   -- the last heartbeat that saw the route move something
    moved     BIGINT NOT NULL,   -- messages or rows stored, published or dead-lettered, all time
    PRIMARY KEY (route, instance)
);
