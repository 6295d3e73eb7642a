//! Unix workload attestation: uid, gids, user and group names, executable path and hash.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::selector::Selector;
use super::{Needs, PeerInfo};

/// Why a caller could not be attested. Every variant denies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The kernel gave no pid for the peer (e.g. it is in another pid namespace).
    #[error("the kernel reported no pid for the caller")]
    NoPid,
    /// The caller exited before or during attestation; its pid may name someone else now.
    #[error("the caller (pid {pid}) exited during attestation")]
    Exited {
        /// The pid it had.
        pid: i32,
    },
    /// The caller's parent cannot hold a task.
    #[error("cannot bind to the parent of pid {pid}: {reason}")]
    Parent {
        /// The caller's pid.
        pid: i32,
        /// Why.
        reason: String,
    },
    /// /proc could not be read for the caller.
    #[error("reading /proc/{pid}/{what}: {source}")]
    Proc {
        /// The caller's pid.
        pid: i32,
        /// Which file.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The caller's executable is larger than the agent hashes (`exe_hash_max_bytes`),
    /// and some entry uses `unix:sha256`.
    #[error(
        "the executable of pid {pid} is {size} bytes, over exe_hash_max_bytes ({limit}): not hashed; raise exe_hash_max_bytes to attest it"
    )]
    ExeTooLarge {
        /// The caller's pid.
        pid: i32,
        /// The executable's size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The agent is shutting down, so attestation could not finish.
    #[error("attestation was interrupted (the agent is shutting down)")]
    Interrupted,
    /// The caller runs in a pod the Kubernetes attestor could not resolve.
    #[error("pid {pid}: {source}")]
    Kubernetes {
        /// The caller's pid.
        pid: i32,
        /// Why.
        #[source]
        source: super::k8s::K8sAttestError,
    },
}

/// What the agent learned about a caller.
#[derive(Clone, Debug)]
pub struct Attestation {
    /// The caller's pid.
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Everything the caller is, as selectors.
    pub selectors: BTreeSet<Selector>,
}

impl Attestation {
    /// Whether every selector in `required` holds for this caller.
    pub fn satisfies<'a>(&self, required: impl IntoIterator<Item = &'a str>) -> bool {
        let mut any = false;
        for s in required {
            any = true;
            if !self.selectors.iter().any(|have| have.as_str() == s) {
                return false;
            }
        }
        // An entry without selectors would match everyone: never.
        any
    }
}

/// Identifies an executable file's content without reading it: if any of these
/// change, the hash is recomputed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The unix attestor. Shared by all connections; caches executable hashes.
#[derive(Debug)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    hashes: Mutex<HashMap<FileIdentity, String>>,
    /// `exe_hash_max_bytes`.
    max_exe_bytes: u64,
    /// Hashes running at once. Owned permits travel with the blocking hash, so a
    /// caller that gives up does not free its slot before its hash ends.
    hashing: Arc<tokio::sync::Semaphore>,
}

/// Hashes kept at most; a busy node runs far fewer distinct binaries.
const HASH_CACHE_MAX: usize = 4096;

/// What one attestation read through `/proc`, before any hashing.
#[derive(Debug)]
pub(crate) struct ProcRead {
    att: Attestation,
    unhashed: Option<Unhashed>,
}

/// An executable to hash: opened through `/proc/<pid>/exe` while the pidfd vouched
/// for the pid, so it is the caller's whatever happens to the pid afterwards.
#[derive(Debug)]
struct Unhashed {
    pid: i32,
    file: File,
    id: FileIdentity,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        UnixAttestor::new("/proc")
    }
}

impl UnixAttestor {
    /// An attestor reading the given procfs mount, hashing executables up to the
    /// default `exe_hash_max_bytes`, half the machine's cores at a time.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        UnixAttestor {
            proc_root: proc_root.into(),
            hashes: Mutex::new(HashMap::new()),
            max_exe_bytes: crate::config::DEFAULT_EXE_HASH_MAX_BYTES,
            hashing: Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1))),
        }
    }

    /// Hashes executables up to `bytes` long (`exe_hash_max_bytes`); callers
    /// running larger ones are refused while some entry uses `unix:sha256`.
    pub fn with_max_exe_bytes(mut self, bytes: u64) -> Self {
        self.max_exe_bytes = bytes;
        self
    }

    /// Attests the peer of a connection: `read` off the async
    /// workers, then `complete`.
    pub async fn attest(
        self: &Arc<Self>,
        peer: &PeerInfo,
        needs: Needs,
    ) -> Result<Attestation, AttestError> {
        let (me, peer) = (Arc::clone(self), peer.clone());
        let read = off_workers(move || me.read(&peer, needs)).await?;
        self.complete(read).await
    }

    /// Everything attestation learns from the kernel about the caller, except the
    /// executable's hash when it is not cached. Blocking: run it off the async workers.
    ///
    /// Pid reuse: everything is read through `/proc/<pid>`, and afterwards the
    /// connection's pidfd is checked. A pidfd names one process forever, and a pid
    /// cannot be reused while its process lives (even as a zombie), so if the
    /// pidfd's process has not exited after the reads, they described the caller.
    ///
    /// The executable is hashed, user and group names looked up, and supplementary
    /// groups read only when some entry uses them (`needs`); hashes are cached by
    /// file identity.
    pub(crate) fn read(&self, peer: &PeerInfo, needs: Needs) -> Result<ProcRead, AttestError> {
        let pid = peer.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        if peer.has_exited() {
            return Err(AttestError::Exited { pid });
        }
        let dir = self.proc_root.join(pid.to_string());
        let proc_err = |what, source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                AttestError::Exited { pid }
            } else {
                AttestError::Proc { pid, what, source }
            }
        };

        let mut selectors = BTreeSet::new();
        selectors.insert(Selector::attested("uid", peer.uid));
        selectors.insert(Selector::attested("gid", peer.gid));
        if needs.names {
            if let Ok(Some(user)) = nix::unistd::User::from_uid(peer.uid.into()) {
                selectors.insert(Selector::attested("user", user.name));
            }
            if let Ok(Some(group)) = nix::unistd::Group::from_gid(peer.gid.into()) {
                selectors.insert(Selector::attested("group", group.name));
            }
        }

        if needs.groups {
            let status =
                std::fs::read_to_string(dir.join("status")).map_err(|e| proc_err("status", e))?;
            for gid in supplementary_gids(&status) {
                selectors.insert(Selector::attested("supplementary_gid", gid));
                if needs.names
                    && let Ok(Some(group)) = nix::unistd::Group::from_gid(gid.into())
                {
                    selectors.insert(Selector::attested("supplementary_group", group.name));
                }
            }
        }

        // The exe link opens (and stats) the very inode the process runs, whichever
        // mount namespace it runs in and even if its path was since replaced or
        // deleted. Its text is only the path as the *caller's* mount namespace
        // names it, which a caller with its own user and mount namespaces chooses
        // (bind-mount any binary over a registered path). So the path is attested
        // only if it names that same file in the agent's own view; a replaced or
        // deleted binary (" (deleted)") never does.
        let exe_link = dir.join("exe");
        let path = std::fs::read_link(&exe_link).map_err(|e| proc_err("exe", e))?;
        let (exe, file) = if needs.exe_hash {
            let file = File::open(&exe_link).map_err(|e| proc_err("exe", e))?;
            (file.metadata().map_err(|e| proc_err("exe", e))?, Some(file))
        } else {
            let meta = std::fs::metadata(&exe_link).map_err(|e| proc_err("exe", e))?;
            (meta, None)
        };
        if names_file(&path, &exe) {
            selectors.insert(Selector::attested("path", path.display()));
        }
        let mut unhashed = None;
        if let Some(file) = file {
            let id = FileIdentity::of(&exe);
            match self.cached(&id) {
                Some(hash) => {
                    selectors.insert(Selector::attested("sha256", hash));
                }
                None if id.size > self.max_exe_bytes => {
                    return Err(AttestError::ExeTooLarge {
                        pid,
                        size: id.size,
                        limit: self.max_exe_bytes,
                    });
                }
                None => unhashed = Some(Unhashed { pid, file, id }),
            }
        }

        if peer.has_exited() {
            return Err(AttestError::Exited { pid });
        }
        Ok(ProcRead {
            att: Attestation {
                pid,
                uid: peer.uid,
                selectors,
            },
            unhashed,
        })
    }

    /// Finishes what [`UnixAttestor::read`] started: hashes the executable if it
    /// was not cached, at most a few at a time, on the blocking pool. Waiting for a
    /// slot costs the runtime nothing, so callers with large executables slow down
    /// each other and callers whose hash is not cached yet, never the agent.
    pub(crate) async fn complete(&self, read: ProcRead) -> Result<Attestation, AttestError> {
        let ProcRead { mut att, unhashed } = read;
        if let Some(u) = unhashed {
            let hash = self.hash(u).await?;
            att.selectors.insert(Selector::attested("sha256", hash));
        }
        Ok(att)
    }

    async fn hash(&self, u: Unhashed) -> Result<String, AttestError> {
        let permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|_| AttestError::Interrupted)?;
        // Callers of the same executable queue behind its first hash: one hashes,
        // the others find it here.
        if let Some(hash) = self.cached(&u.id) {
            return Ok(hash);
        }
        let Unhashed { pid, file, id } = u;
        let hash = off_workers(move || {
            let _permit = permit;
            sha256_hex(file, id.size).map_err(|source| AttestError::Proc {
                pid,
                what: "exe",
                source,
            })
        })
        .await?;
        let mut cache = self.lock();
        if cache.len() >= HASH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, hash.clone());
        Ok(hash)
    }

    fn cached(&self, id: &FileIdentity) -> Option<String> {
        self.lock().get(id).cloned()
    }

    /// The caller's parent process, for tasks bound to it: its pid and a pidfd.
    /// The parent must run as the caller's effective uid. The link is re-read
    /// after the pidfd is opened, and the caller must still be alive, so the
    /// pidfd names the process that really is the caller's parent. Blocking (reads
    /// `/proc`): [`super::Attestor::parent_of`] runs it off the async workers.
    pub fn parent_of(&self, peer: &PeerInfo) -> Result<(i32, OwnedFd), AttestError> {
        let pid = peer.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let ppid = self.ppid(pid)?;
        if ppid <= 1 {
            return Err(AttestError::Parent {
                pid,
                reason: "the caller has no parent to bind to (it was reparented to init)".into(),
            });
        }
        let fd = super::sys::pidfd_open(ppid).map_err(|_| AttestError::Exited { pid: ppid })?;
        if self.ppid(pid)? != ppid || peer.has_exited() {
            return Err(AttestError::Exited { pid });
        }
        let status = std::fs::read_to_string(self.proc_root.join(ppid.to_string()).join("status"))
            .map_err(|source| AttestError::Proc {
                pid: ppid,
                what: "status",
                source,
            })?;
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if euid != Some(peer.uid) {
            return Err(AttestError::Parent {
                pid,
                reason: format!("parent process {ppid} runs as another user"),
            });
        }
        if super::sys::pidfd_exited(&fd).unwrap_or(true) {
            return Err(AttestError::Exited { pid: ppid });
        }
        Ok((ppid, fd))
    }

    fn ppid(&self, pid: i32) -> Result<i32, AttestError> {
        let stat = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat"))
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    AttestError::Exited { pid }
                } else {
                    AttestError::Proc {
                        pid,
                        what: "stat",
                        source,
                    }
                }
            })?;
        parse_ppid(&stat).ok_or_else(|| AttestError::Parent {
            pid,
            reason: "unreadable /proc stat".into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileIdentity, String>> {
        self.hashes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Whether `path`, in the agent's own view of the filesystem, is the file `exe`.
fn names_file(path: &Path, exe: &std::fs::Metadata) -> bool {
    path.is_absolute()
        && std::fs::metadata(path).is_ok_and(|m| m.dev() == exe.dev() && m.ino() == exe.ino())
}

/// SHA-256 of the first `len` bytes of `file` (its size when it was checked: a
/// file that grew since is not read past what the size limit allowed).
fn sha256_hex(file: File, len: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut file = file.take(len);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs blocking attestation work (`/proc` reads, `lstat`s, hashing) on the
/// blocking pool, so a slow disk or a huge executable never holds a runtime worker.
pub(crate) async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AttestError> + Send + 'static,
) -> Result<T, AttestError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(AttestError::Interrupted),
    }
}

/// Field 4 of /proc/<pid>/stat; the command name (field 2) may hold spaces and
/// parentheses, so parsing starts after the last ')'.
fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The `Groups:` line of /proc/<pid>/status.
fn supplementary_gids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
