//! The bridge's own state store (sqlx, SQLite by default, or PostgreSQL): dead letters
//! (with the claims `dlq replay` takes on them), outbound positions, and how far the
//! dead-letter mirror has got. Each backend's schema lives in `migrations/<backend>/`.

mod dead_letters;
#[cfg(test)]
mod full_disk;
mod positions;
mod store;

pub use dead_letters::{Claimed, DeadLetterField, DeadLetterFilter, Failure};
pub use store::{State, StateError};
