//! Where PostgreSQL's server binaries are.

use std::path::{Path, PathBuf};

use crate::PgTestError;

/// Names a directory holding `initdb` and `postgres`, overriding the search.
pub const BIN_ENV: &str = "TESSERA_POSTGRES_BIN";

/// Where Debian installs each major version's server binaries.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The directory holding `initdb` and `postgres`: `TESSERA_POSTGRES_BIN` if set, else
/// the highest major version under `/usr/lib/postgresql/*/bin` (Debian and Ubuntu keep
/// the server binaries off `PATH`).
pub fn find_binaries() -> Result<PathBuf, PgTestError> {
    let candidates = match std::env::var_os(BIN_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => debian_versions(Path::new(DEBIAN_ROOT)),
    };
    candidates
        .iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .cloned()
        .ok_or(PgTestError::NoBinaries {
            searched: if candidates.is_empty() {
                vec![PathBuf::from(DEBIAN_ROOT).join("*/bin")]
            } else {
                candidates
            },
        })
}

/// `<root>/<major>/bin` for every numeric major version under `root`, highest first.
fn debian_versions(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    versions.into_iter().map(|(_, dir)| dir).collect()
}
