//! The bridge's own state store (sqlx, SQLite by default, or PostgreSQL): dead letters
//! (with the claims `dlq replay` takes on them), outbound positions, how far the
//! dead-letter mirror has got, and the leases that give each outbound route and the mirror
//! one holder among the instances sharing the store. Each backend's schema lives in `migrations/<backend>/`.

mod dead_letters;
#[cfg(test)]
mod full_disk;
mod leases;
mod positions;
mod store;
#[cfg(test)]
pub(crate) mod test_stores;
mod work;

pub use dead_letters::{Claimed, DeadLetterField, DeadLetterFilter, Failure};
pub use leases::{Fence, Holder, InstanceRow, LeaseRow};
pub use store::{State, StateError};
pub use work::{WorkDone, WorkRow};
