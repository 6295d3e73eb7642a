//! Writing SVIDs to disk for tools that read files: a private directory, atomic writes,
//! and private keys that are never readable by others, not even for an instant.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use pem::{EncodeConfig, LineEnding, Pem};
use zeroize::Zeroizing;

/// The file names one SVID is written under.
#[derive(Debug, Clone, Copy)]
pub struct SvidFileNames<'a> {
    /// The certificate chain, leaf first (PEM, mode 0644).
    pub chain: &'a str,
    /// The private key (PKCS#8 PEM, mode 0600).
    pub key: &'a str,
    /// The trust bundle's CA certificates (PEM, mode 0644).
    pub bundle: &'a str,
}

/// Writes one SVID into `dir` (which must exist; see [`ensure_private_dir`]): the chain,
/// the PKCS#8 key and the bundle, as PEM with LF line endings. Returns the paths written,
/// in that order.
pub fn write_svid_files(
    dir: &Path,
    names: SvidFileNames<'_>,
    chain: &[&[u8]],
    key_der: &[u8],
    bundle: &[&[u8]],
) -> anyhow::Result<Vec<PathBuf>> {
    let config = EncodeConfig::new().set_line_ending(LineEnding::LF);
    let certs = |ders: &[&[u8]]| {
        let pems: Vec<Pem> = ders.iter().map(|c| Pem::new("CERTIFICATE", *c)).collect();
        pem::encode_many_config(&pems, config)
    };
    let chain_path = write_atomic(dir, names.chain, certs(chain).as_bytes(), 0o644)?;

    let key = Pem::new("PRIVATE KEY", key_der);
    let key_pem = Zeroizing::new(pem::encode_config(&key, config));
    // The DER copy inside `Pem` is wiped too.
    drop(Zeroizing::new(key.into_contents()));
    let key_path = write_atomic(dir, names.key, key_pem.as_bytes(), 0o600)?;

    let bundle_path = write_atomic(dir, names.bundle, certs(bundle).as_bytes(), 0o644)?;
    Ok(vec![chain_path, key_path, bundle_path])
}

/// Creates `dir` (and missing parents) with mode 0700, or checks the existing one.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o022 != 0 {
                eprintln!(
                    "warning: {} is writable by other users; they could replace the files written there",
                    dir.display()
                );
            }
            Ok(())
        }
        Ok(_) => anyhow::bail!("{} exists and is not a directory", dir.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create directory {}", dir.display())),
        Err(err) => Err(err).with_context(|| format!("cannot use directory {}", dir.display())),
    }
}

/// Writes `contents` to `dir/name` through a fresh temporary file created with `mode`
/// (`O_CREAT|O_EXCL`, so the mode holds from the first byte and no symlink is followed),
/// then renames it into place so readers never see a half-written file.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("cannot write {}", target.display()));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_0600_and_the_directory_0700() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("out/svid");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let key = write_atomic(&dir, "svid.0.key", b"secret", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Rewriting replaces a file that had a looser mode.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&dir, "svid.0.key", b"secret2", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&key).unwrap(), b"secret2");
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_file_in_the_way_of_the_directory_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = ensure_private_dir(&file).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
