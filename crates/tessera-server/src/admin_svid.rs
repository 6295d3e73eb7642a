//! `tessera-server admin-svid issue`: an administrator's X.509-SVID
//! (`spiffe://<td>/admin/<name>`) signed by the cluster root, for the Admin API over the
//! server's TLS listener (`admin_tls`). Made where the root's files are (a replica's pod,
//! or wherever `ca init` ran), written to a new directory: the certificate chain, its key
//! (0600) and the bundle the CLI pins the server with.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tessera_authority::{Authority, ClusterPolicy, SvidSpec};
use tessera_identity::{AdminId, AdminName, TrustDomain};

/// Longest admin SVID this command issues: an admin credential is a standing key to the
/// whole trust domain, so it is short-lived and re-issued, not kept.
pub const MAX_ADMIN_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where [`issue_admin_svid`] wrote.
#[derive(Debug)]
pub struct AdminSvidFiles {
    /// The admin's SPIFFE ID.
    pub spiffe_id: String,
    /// `admin.crt`: the SVID (PEM).
    pub cert: PathBuf,
    /// `admin.key`: its PKCS#8 key (PEM, 0600).
    pub key: PathBuf,
    /// `bundle.crt`: the cluster's root(s) (PEM), to verify the server with.
    pub bundle: PathBuf,
    /// notAfter, unix seconds.
    pub not_after_unix: i64,
}

/// Issues `spiffe://<td>/admin/<name>` for `ttl` with the root in `cert`/`key` and writes
/// it into `out` (created 0700; files that exist are never replaced).
pub fn issue_admin_svid(
    trust_domain: &TrustDomain,
    cert: &Path,
    key: &Path,
    name: &str,
    ttl: Duration,
    out: &Path,
) -> anyhow::Result<AdminSvidFiles> {
    let name: AdminName = name
        .parse()
        .with_context(|| format!("{name:?} is not an admin name"))?;
    anyhow::ensure!(
        !ttl.is_zero() && ttl <= MAX_ADMIN_SVID_TTL,
        "--ttl must be between 1s and {}",
        humantime::format_duration(MAX_ADMIN_SVID_TTL)
    );
    let root = Authority::open_cluster_root(
        trust_domain.clone(),
        cert,
        key,
        // Unused here (no node CA is signed), but the policy must be valid.
        ClusterPolicy {
            node_ca_ttl: Duration::from_secs(24 * 3600),
        },
    )
    .with_context(|| format!("opening the cluster root {}", cert.display()))?;
    let id = AdminId::new(trust_domain.clone(), name).to_string();
    let svid = root
        .issue(&SvidSpec {
            spiffe_id: &id,
            ttl,
            not_after_cap: None,
            claims: None,
        })
        .context("issuing the admin SVID")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let certs = |ders: &[Vec<u8>]| -> String {
        ders.iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect()
    };
    let key_pem = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        svid.key_pkcs8_der.to_vec(),
    )));
    // The key first: if it cannot be written, no certificate is left without it.
    let key_path = write_new(out, "admin.key", 0o600, key_pem.as_bytes())?;
    let cert_path = write_new(out, "admin.crt", 0o644, certs(&svid.chain_der).as_bytes())?;
    let bundle_path = write_new(
        out,
        "bundle.crt",
        0o644,
        certs(&root.bundle().certs).as_bytes(),
    )?;
    Ok(AdminSvidFiles {
        spiffe_id: svid.spiffe_id,
        cert: cert_path,
        key: key_path,
        bundle: bundle_path,
        not_after_unix: svid.not_after_unix,
    })
}

fn write_new(dir: &Path, name: &str, mode: u32, contents: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("creating {} (never replaced)", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
