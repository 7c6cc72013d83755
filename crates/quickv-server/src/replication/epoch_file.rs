//! The replication epoch on disk: one small file per server (`ServerConfig::epoch_file`), so the
//! epoch fence survives a restart. Without it a restarted backup starts at epoch 0 and admits a
//! stale primary process that claims current data from an older link (review F3).
//!
//! The file holds the epoch in decimal and a newline. It is replaced whole: written to a
//! temporary file beside it, fsync'd, renamed over the old one, and the directory fsync'd, so a
//! crash leaves either the old epoch or the new one, never a torn file. A missing file is epoch 0
//! (a server's first start); anything else that cannot be read refuses the start, since
//! guessing 0 would silently drop the fence.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The epoch stored at `path`: 0 if there is no file yet; an error if it cannot be read or does
/// not hold an epoch.
pub fn load(path: &Path) -> Result<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::file(path, e)),
    };
    text.trim().parse::<u64>().map_err(|_| {
        Error::file(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not a replication epoch ({:?}); delete the file only if this server's \
                     peer knows the pair's latest epoch",
                    text.chars().take(40).collect::<String>()
                ),
            ),
        )
    })
}

/// Replaces the epoch stored at `path` with `epoch`, durably (see the module doc).
pub fn store(path: &Path, epoch: u64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{epoch}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_survives_a_round_trip_and_a_missing_file_is_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("epoch-backup-127-0-0-1_4471");
        assert_eq!(load(&path).expect("missing"), 0);
        store(&path, 7).expect("store");
        store(&path, 9).expect("store again");
        assert_eq!(load(&path).expect("load"), 9);
        std::fs::write(&path, "nine\n").expect("write");
        let err = load(&path).expect_err("garbage is refused").to_string();
        assert!(err.contains("not a replication epoch"), "{err}");
    }
}
