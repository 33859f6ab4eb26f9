//! Messages → rows: each value into each column type, compared with what the database holds.
