//! The state store on a disk that fills up, and a write abandoned mid-transaction.

/// A small tmpfs that can be filled up, for the state store's full-disk behaviour.
mod small_disk {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A 2 MiB tmpfs mounted on a fresh directory, unmounted on drop.
    pub struct SmallDisk {
        dir: tempfile::TempDir,
    }

    impl SmallDisk {
        pub fn mount() -> SmallDisk {
            let dir = tempfile::tempdir().unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "mounting a tmpfs needs root");
            SmallDisk { dir }
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Writes a filler file until the disk is full; returns its path.
        pub fn fill(&self) -> PathBuf {
            use std::io::Write;
            let path = self.path().join("filler");
            let mut file = std::fs::File::create(&path).unwrap();
            let block = vec![0u8; 4096];
            while file.write_all(&block).is_ok() {}
            let _ = file.sync_all();
            path
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            // Lazily, so that a store a failed test left open does not keep it mounted.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

mod tests {
    use std::time::Duration;

    use super::small_disk::SmallDisk;
    use crate::dlq::{Direction, NewDeadLetter};
    use crate::state::dead_letters::Inserts;
    use crate::state::store::in_write;
    use crate::state::{DeadLetterFilter, State};

    fn big_letter(n: usize) -> NewDeadLetter {
        NewDeadLetter {
            route: "r".into(),
            direction: Direction::Inbound,
            source: format!("t/{n}"),
            payload: vec![b'x'; 16 * 1024],
            headers: serde_json::json!({}),
            error_kind: "decode".into(),
            error: "e".into(),
            sqlstate: None,
        }
    }

    #[tokio::test]
    async fn an_abandoned_write_releases_the_store() {
        // Given a write that is cancelled (a route task aborted at shutdown) mid-transaction
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let state = State::open(&url).await.unwrap();
        let letters = [big_letter(0)];
        let abandoned = async {
            in_write!(state, |tx, _pg| {
                tx.insert_dead_letter(&letters[0], "2000-01-01T00:00:00.000Z")
                    .await?;
                std::future::pending::<Result<(), sqlx::Error>>().await
            })
        };
        let cancel = tokio::time::timeout(Duration::from_millis(50), abandoned).await;
        assert!(cancel.is_err(), "the write never finishes by itself");

        // Then neither this pool nor another process is left waiting on its transaction
        state.store_dead_letters(&[big_letter(1)]).await.unwrap();
        let other = State::open(&url).await.unwrap();
        let all = DeadLetterFilter::default();
        other.store_dead_letters(&[big_letter(2)]).await.unwrap();
        assert_eq!(other.count_dead_letters(&all).await.unwrap(), 2);
        other.close().await;
        state.close().await;
    }

    #[tokio::test]
    async fn a_full_disk_leaves_no_connection_inside_a_transaction() {
        // Given a store on a small disk that then fills up
        let disk = SmallDisk::mount();
        let url = format!("sqlite://{}", disk.path().join("s.db").display());
        let state = State::open(&url).await.unwrap();
        state.store_dead_letters(&[big_letter(0)]).await.unwrap();
        let filler = disk.fill();

        // When letters are stored while it is full
        let mut stored = 1;
        let mut failures = 0;
        for n in 1..40 {
            match state.store_dead_letters(&[big_letter(n)]).await {
                Ok(_) => stored += 1,
                Err(_) => failures += 1,
            }
        }
        assert!(failures > 0, "the disk never filled up");

        // and more once space is free again
        std::fs::remove_file(filler).unwrap();
        for n in 40..60 {
            state.store_dead_letters(&[big_letter(n)]).await.unwrap();
            stored += 1;
        }

        // Then another process sees every letter reported stored, and can write
        let other = State::open(&url).await.unwrap();
        let all = DeadLetterFilter::default();
        assert_eq!(other.count_dead_letters(&all).await.unwrap(), stored);
        assert_eq!(other.purge_dead_letters(&all).await.unwrap(), stored);
        other.close().await;
        state.close().await;
    }
}
