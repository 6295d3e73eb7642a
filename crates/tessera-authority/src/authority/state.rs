//! The CA set an authority holds, by role, and its record on disk (`state.json`): which
//! CA files are active, prepared and retiring. Created on first start, read on every
//! start, rewritten atomically at every rotation step.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_identity::TrustDomain;
use time::OffsetDateTime;

use crate::ca::SigningCa;
use crate::{AuthorityError, pem};

const STATE_FILE: &str = "state.json";

/// On-disk record of which CA files play which role.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    active: String,
    prepared: Option<String>,
    retiring: Vec<Retiring>,
}

/// A CA that no longer signs, kept in the bundle until its last SVID has expired.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct Retiring {
    pub(super) name: String,
    pub(super) cert_pem: String,
    pub(super) until_unix: i64,
}

/// The CAs an [`super::Authority`] holds, by role.
pub(super) struct CaSet {
    pub(super) active: Arc<SigningCa>,
    pub(super) prepared: Option<(Arc<SigningCa>, String)>,
    pub(super) retiring: Vec<Retiring>,
    /// Roots given from outside (upstream mode, or the cluster's bundle on a node): the
    /// bundle then is exactly these.
    pub(super) upstream_roots: Vec<Vec<u8>>,
}

impl CaSet {
    /// Loads the self-signed CA set of `trust_domain` recorded in `dir`, or creates a root
    /// CA living `ca_ttl` with pathLen `path_len` and its record on first start.
    pub(super) fn load_or_create_root(
        dir: &Path,
        trust_domain: &TrustDomain,
        ca_ttl: std::time::Duration,
        path_len: u8,
        now: OffsetDateTime,
    ) -> Result<CaSet, AuthorityError> {
        let state_path = dir.join(STATE_FILE);
        if !state_path.exists() {
            let ttl = time::Duration::try_from(ca_ttl)
                .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
            let (ca, key_pem) = SigningCa::generate_root(trust_domain, now, ttl, path_len)?;
            ca.save(dir, &key_pem)?;
            let set = CaSet {
                active: Arc::new(ca),
                prepared: None,
                retiring: Vec::new(),
                upstream_roots: Vec::new(),
            };
            set.save(dir)?;
            tracing::info!(ca = %set.active.name, dir = %dir.display(), "created self-signed root CA");
            return Ok(set);
        }
        let corrupt = |reason: String| AuthorityError::CorruptState {
            path: state_path.clone(),
            reason,
        };
        let text = std::fs::read(&state_path)
            .map_err(|e| AuthorityError::io("reading", &state_path, e))?;
        let state: StateFile = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != 1 {
            return Err(corrupt(format!("unknown version {}", state.version)));
        }
        let active = SigningCa::load(dir, &state.active)?;
        if active.cert_der.is_empty() || !trust_domain_matches(&active.cert_der, trust_domain) {
            return Err(corrupt(format!(
                "CA {} is not for trust domain {}",
                state.active,
                trust_domain.as_str()
            )));
        }
        let prepared = match &state.prepared {
            Some(name) => {
                let ca = SigningCa::load(dir, name)?;
                let key_pem = pem::read_key(&dir.join(format!("{name}.key.pem")))?;
                Some((Arc::new(ca), key_pem))
            }
            None => None,
        };
        tracing::info!(ca = %active.name, "loaded self-signed root CA");
        Ok(CaSet {
            active: Arc::new(active),
            prepared,
            retiring: state.retiring,
            upstream_roots: Vec::new(),
        })
    }

    /// Records which CA files play which role, replacing the record atomically.
    pub(super) fn save(&self, dir: &Path) -> Result<(), AuthorityError> {
        let state = StateFile {
            version: 1,
            active: self.active.name.clone(),
            prepared: self.prepared.as_ref().map(|p| p.0.name.clone()),
            retiring: self.retiring.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).expect("state serializes");
        pem::write_atomic(&dir.join(STATE_FILE), &json, 0o600)
    }
}

/// Creates `dir` with mode 0700, or refuses it if group or others can access it.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), AuthorityError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuthorityError::io("creating", dir, e))?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| AuthorityError::io("reading", dir, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthorityError::InsecureKeyFile {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn trust_domain_matches(cert_der: &[u8], td: &TrustDomain) -> bool {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::URI(u) if *u == td.id_string()))
}
