//! Cedar policies and schema from files: validated at load (strict mode), hot-reloaded.
//!
//! A policy's id is its `@id("...")` annotation when present (stable across edits, good
//! for audit), else Cedar's positional `policyN`. Templates are refused: per-client facts
//! belong in the request context, not in thousands of linked policies (every policy is
//! evaluated on every request). A reload that fails (unreadable file, parse error,
//! validation error, duplicate id) keeps the last good set and logs why.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use tokio::task::JoinHandle;

/// Why a policy set was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The schema does not parse.
    #[error("schema: {0}")]
    Schema(String),
    /// The policies do not parse.
    #[error("policies: {0}")]
    Parse(String),
    /// The policies do not validate against the schema in strict mode.
    #[error("policies fail strict validation: {0}")]
    Validation(String),
    /// Two policies share an `@id`.
    #[error("duplicate policy id {0:?}")]
    DuplicateId(String),
    /// The file holds templates, which are not supported.
    #[error("policy templates are not supported")]
    Templates,
}

/// A validated policy set with its schema.
#[derive(Debug)]
pub struct LoadedPolicies {
    /// The policies, renamed to their `@id` annotations.
    pub policies: PolicySet,
    /// The schema they validated against.
    pub schema: Schema,
    /// When they were loaded.
    pub loaded_at: SystemTime,
}

/// Where policies and schema live on disk.
#[derive(Clone, Debug)]
pub struct PolicyFiles {
    /// Cedar policies (`.cedar`).
    pub policies: PathBuf,
    /// Cedar schema in the human-readable syntax (`.cedarschema`).
    pub schema: PathBuf,
}

/// The current policy set, swapped atomically on reload. Share it in an `Arc`.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<LoadedPolicies>,
    files: Option<PolicyFiles>,
}

// === impl PolicyStore ===

impl PolicyStore {
    /// A store from policy and schema text (no files, no reload).
    ///
    /// # Errors
    /// [`PolicyError`] if they do not parse or validate.
    pub fn from_strs(policies: &str, schema: &str) -> Result<Self, PolicyError> {
        Ok(Self {
            current: ArcSwap::from_pointee(compile(policies, schema)?),
            files: None,
        })
    }

    /// Loads `files`; later [`Self::reload`]s read the same paths.
    ///
    /// # Errors
    /// [`PolicyError`] if the files cannot be read, parsed or validated.
    pub fn load(files: PolicyFiles) -> Result<Self, PolicyError> {
        let loaded = load_files(&files)?;
        Ok(Self {
            current: ArcSwap::from_pointee(loaded),
            files: Some(files),
        })
    }

    /// The current set.
    pub fn current(&self) -> Arc<LoadedPolicies> {
        self.current.load_full()
    }

    /// Lock-free access for the hot path.
    pub(crate) fn guard(&self) -> arc_swap::Guard<Arc<LoadedPolicies>> {
        self.current.load()
    }

    /// Replaces the set from text; on error the current set stays.
    ///
    /// # Errors
    /// [`PolicyError`] if the new text does not parse or validate.
    pub fn replace_from_strs(&self, policies: &str, schema: &str) -> Result<(), PolicyError> {
        self.current.store(Arc::new(compile(policies, schema)?));
        Ok(())
    }

    /// Re-reads the files (no-op for a store built from text); on error the current set
    /// stays and the error is logged and returned.
    ///
    /// # Errors
    /// [`PolicyError`] for the new files.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        match load_files(files) {
            Ok(loaded) => {
                tracing::info!(
                    policies = loaded.policies.policies().count(),
                    path = %files.policies.display(),
                    "tessera-verify: policies reloaded"
                );
                self.current.store(Arc::new(loaded));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, path = %files.policies.display(),
                    "tessera-verify: policy reload failed; keeping the last good set");
                Err(e)
            }
        }
    }

    /// Polls the files' size and mtime every `interval` and reloads on change.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let Some(files) = store.files.clone() else {
                return;
            };
            let stamp = |f: &PolicyFiles| {
                [&f.policies, &f.schema].map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.len(), m.modified().ok()?)))
                })
            };
            let mut seen = stamp(&files);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&files);
                if now != seen {
                    seen = now;
                    let _ = store.reload();
                }
            }
        })
    }

    /// The ids of the loaded policies.
    pub fn policy_ids(&self) -> Vec<String> {
        self.current
            .load()
            .policies
            .policies()
            .map(|p| p.id().to_string())
            .collect()
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn load_files(files: &PolicyFiles) -> Result<LoadedPolicies, PolicyError> {
    compile(&read(&files.policies)?, &read(&files.schema)?)
}

/// Parses, renames to `@id`, and validates in strict mode.
fn compile(policies: &str, schema: &str) -> Result<LoadedPolicies, PolicyError> {
    let (schema, warnings) =
        Schema::from_cedarschema_str(schema).map_err(|e| PolicyError::Schema(format!("{e:?}")))?;
    for w in warnings {
        tracing::warn!(warning = %w, "tessera-verify: Cedar schema warning");
    }
    let parsed = PolicySet::from_str(policies).map_err(|e| PolicyError::Parse(format!("{e:?}")))?;
    if parsed.templates().next().is_some() {
        return Err(PolicyError::Templates);
    }
    let mut named = PolicySet::new();
    for p in parsed.policies() {
        let p = match p.annotation("id") {
            Some(id) => p.new_id(PolicyId::new(id)),
            None => p.clone(),
        };
        let id = p.id().to_string();
        named.add(p).map_err(|_| PolicyError::DuplicateId(id))?;
    }
    let result = Validator::new(schema.clone()).validate(&named, ValidationMode::Strict);
    if !result.validation_passed() {
        let msgs: Vec<String> = result.validation_errors().map(|e| format!("{e}")).collect();
        return Err(PolicyError::Validation(msgs.join("; ")));
    }
    Ok(LoadedPolicies {
        policies: named,
        schema,
        loaded_at: SystemTime::now(),
    })
}
