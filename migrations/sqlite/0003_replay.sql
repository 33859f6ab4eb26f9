-- `dlq replay` claims the entries it works on, so that it can run beside `mqdb run` and
-- other replays on the same store: a claimed entry belongs to one replay until it is
-- resolved (deleted), failed again, or released. Claims of a replay that died expire.
ALTER TABLE dead_letters ADD COLUMN claimed_by TEXT;
ALTER TABLE dead_letters ADD COLUMN claimed_at TEXT;

CREATE INDEX dead_letters_by_age ON dead_letters (first_failed_at);

-- How far the dead-letter mirror (dead_letter.publish) has got: the last id confirmed.
CREATE TABLE mirror_position (
    name    TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
