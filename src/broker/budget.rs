//! The bytes a broker's messages may hold inside the bridge at once. A source takes a
//! message's size from the budget before handing it to a route and gives it back when the
//! message is acknowledged, so a source whose budget is spent stops reading from its
//! connection, and the broker holds the rest.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    limit: u32,
}

impl ByteBudget {
    pub fn new(limit: u64) -> ByteBudget {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX).max(1);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// A message larger than the whole budget waits until nothing else is held, so one
    /// oversized message cannot wait forever.
    fn cost(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit)
    }

    /// Waits until `bytes` are free; `None` once the budget is closed.
    pub async fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.bytes
            .clone()
            .acquire_many_owned(self.cost(bytes))
            .await
            .ok()
    }

    /// `bytes` at once, or `None` when they are not free now.
    pub fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.bytes
            .clone()
            .try_acquire_many_owned(self.cost(bytes))
            .ok()
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> u64 {
        u64::from(self.limit) - self.bytes.available_permits() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_bytes_until_released() {
        let budget = ByteBudget::new(100);
        let a = budget.take(60).await.unwrap();
        assert_eq!(budget.held(), 60);
        assert!(budget.try_take(50).is_none());
        let b = budget.try_take(40).unwrap();
        assert_eq!(budget.held(), 100);
        drop(a);
        // Larger than the whole budget: waits for everything, then proceeds alone.
        assert!(budget.try_take(1000).is_none());
        drop(b);
        let all = budget.try_take(1000).unwrap();
        assert_eq!(budget.held(), 100);
        drop(all);
        assert_eq!(budget.held(), 0);
    }
}
