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

/// Reads a private key PEM file, refusing one that others can read.
pub(crate) fn read_key(path: &Path) -> Result<String, AuthorityError> {
    let meta = fs::metadata(path).map_err(|e| AuthorityError::io("reading", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
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
