//! The node's credentials on disk: the two keys made here and what the server certified
//! for them, in one file (mode 0600) so a key and its certificate are replaced together.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_authority::NodeCaKey;
use tessera_proto::tessera::v1::NodeCredentials;
use zeroize::Zeroizing;

/// Largest credentials file read back: two keys, two short chains and a bundle are a
/// few KiB; anything far larger is not ours.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why the saved credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    /// Reading or writing the file.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is readable by others: its keys must be treated as leaked.
    #[error("{path} has mode {mode:o}; the node's keys must be 0600")]
    InsecureMode { path: PathBuf, mode: u32 },
    /// The file does not parse (or is too large).
    #[error("{path} is not a credentials file: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// The node's keys and the credentials the server issued for them.
#[derive(Debug)]
pub(crate) struct NodeState {
    /// Key of the node SVID (mTLS to the server). A P-256 key like the node CA's, so the
    /// same type holds it.
    pub(crate) svid_key: NodeCaKey,
    /// Key of the node CA (signs this node's client and task SVIDs).
    pub(crate) ca_key: NodeCaKey,
    /// What the server returned for those keys.
    pub(crate) credentials: NodeCredentials,
}

/// On-disk form: DER as hex.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    node_id: String,
    svid_key: String,
    ca_key: String,
    node_svid_chain: Vec<String>,
    node_ca_chain: Vec<String>,
    bundle: Vec<String>,
    renew_after_unix: i64,
}

impl NodeState {
    /// A copy of the node CA key (the authority takes one by value).
    pub(crate) fn ca_key_copy(&self) -> NodeCaKey {
        NodeCaKey::from_pkcs8_der(&self.ca_key.to_pkcs8_der()).expect("a key we hold re-parses")
    }

    /// notAfter of the node SVID, unix seconds; `None` when it does not parse.
    pub(crate) fn svid_not_after(&self) -> Option<i64> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let leaf = self.credentials.node_svid_chain.first()?;
        let (_, cert) = X509Certificate::from_der(leaf).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The file in `dir` (`<data_dir>/node`) holding the state.
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join("credentials.json")
    }

    /// Reads the saved state; `Ok(None)` when there is none yet.
    pub(crate) fn load(dir: &Path) -> Result<Option<NodeState>, StateError> {
        use std::os::unix::fs::PermissionsExt;
        let path = Self::path(dir);
        let io = |action, source| StateError::Io {
            action,
            path: path.clone(),
            source,
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::InsecureMode { path, mode });
        }
        let malformed = |reason: String| StateError::Malformed {
            path: path.clone(),
            reason,
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(malformed(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = Zeroizing::new(fs::read(&path).map_err(|e| io("reading", e))?);
        let saved: Saved = serde_json::from_slice(&text).map_err(|e| malformed(e.to_string()))?;
        let der = |h: &str| hex::decode(h).map_err(|e| malformed(e.to_string()));
        let key = |h: &str| {
            let der = Zeroizing::new(der(h)?);
            NodeCaKey::from_pkcs8_der(&der).map_err(|e| malformed(e.to_string()))
        };
        let list = |v: &[String]| v.iter().map(|h| der(h)).collect::<Result<Vec<_>, _>>();
        Ok(Some(NodeState {
            svid_key: key(&saved.svid_key)?,
            ca_key: key(&saved.ca_key)?,
            credentials: NodeCredentials {
                node_id: saved.node_id,
                node_svid_chain: list(&saved.node_svid_chain)?,
                node_ca_chain: list(&saved.node_ca_chain)?,
                bundle: list(&saved.bundle)?,
                renew_after_unix: saved.renew_after_unix,
            },
        }))
    }

    /// Writes the state atomically (temporary file, fsync, rename) with mode 0600.
    pub(crate) fn save(&self, dir: &Path) -> Result<(), StateError> {
        let io = |action, path: &Path, source| StateError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("creating", dir, e))?;
        let hexes = |v: &[Vec<u8>]| v.iter().map(hex::encode).collect::<Vec<_>>();
        let c = &self.credentials;
        let saved = Saved {
            node_id: c.node_id.clone(),
            svid_key: hex::encode(self.svid_key.to_pkcs8_der().as_slice()),
            ca_key: hex::encode(self.ca_key.to_pkcs8_der().as_slice()),
            node_svid_chain: hexes(&c.node_svid_chain),
            node_ca_chain: hexes(&c.node_ca_chain),
            bundle: hexes(&c.bundle),
            renew_after_unix: c.renew_after_unix,
        };
        let text = Zeroizing::new(serde_json::to_vec_pretty(&saved).expect("serializes"));
        // The hex copies of the keys in `saved` are dropped without zeroing; the file
        // holds them anyway.
        let path = Self::path(dir);
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("creating", &tmp, e))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", &path, e))?;
        // The rename must survive a crash: a node that lost its credentials needs a new
        // join token.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
