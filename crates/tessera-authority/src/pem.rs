//! Small PEM and file helpers; key files are written atomically with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::AuthorityError;

/// Parses every `CERTIFICATE` block of a PEM file into DER.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, AuthorityError> {
    let text = fs::read_to_string(path).map_err(|e| AuthorityError::io("reading", path, e))?;
    let blocks = ::pem::parse_many(&text).map_err(|e| AuthorityError::BadPem {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(AuthorityError::BadPem {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Whether a file holding a secret is private enough to use: readable by its owner only
/// (0600 or stricter), or, as PostgreSQL allows for its server key, owned by root and
/// readable by our own group only (0640 or stricter, the file's group our effective
/// gid, and we are not root). The second is what a Kubernetes Secret mounted with
/// `fsGroup` looks like (root-owned, 0440, group = fsGroup): it lets a server run as a
/// non-root uid without loosening anything else. Never writable or readable by others.
pub fn is_private_file(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 == 0 {
        return true;
    }
    meta.uid() == 0
        && mode & 0o037 == 0
        && !nix::unistd::geteuid().is_root()
        && meta.gid() == nix::unistd::getegid().as_raw()
}

/// Reads a private key PEM file, refusing one that others can read.
pub(crate) fn read_key(path: &Path) -> Result<String, AuthorityError> {
    let meta = fs::metadata(path).map_err(|e| AuthorityError::io("reading", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if !is_private_file(&meta) {
        return Err(AuthorityError::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(|e| AuthorityError::io("reading", path, e))
}

/// Writes `contents` to `path` atomically (temp file + rename) with `mode`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| AuthorityError::io("creating", &tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| AuthorityError::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| AuthorityError::io("renaming", path, e))?;
    if let Some(dir) = path.parent() {
        // Make the rename durable; a crash must not leave a CA with no key.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Encodes DER certificates as PEM.
pub(crate) fn certs_to_pem(certs: &[Vec<u8>]) -> String {
    certs
        .iter()
        .map(|der| ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn only_owner_only_files_or_roots_files_for_our_group_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k").unwrap();
        let with_mode = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            is_private_file(&std::fs::metadata(&path).unwrap())
        };
        assert!(with_mode(0o600));
        assert!(with_mode(0o400));
        assert!(!with_mode(0o644));
        assert!(!with_mode(0o604));
        assert!(!with_mode(0o660), "group-writable never");
        // 0440 passes only for a non-root process whose group the root-owned file
        // names (a Kubernetes Secret with fsGroup); a file we own ourselves that our
        // group may read does not.
        use std::os::unix::fs::MetadataExt as _;
        let meta_uid = std::fs::metadata(&path).unwrap().uid();
        let ours_and_not_root = meta_uid != 0;
        if ours_and_not_root || nix::unistd::geteuid().is_root() {
            assert!(!with_mode(0o440));
        }
    }
}
