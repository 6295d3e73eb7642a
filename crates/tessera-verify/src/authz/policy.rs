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
use cedar_policy::{EntityUid, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

use super::entities::TASK_TYPE;
use super::slice::{Slice, Slices};
use crate::background::Background;

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
    /// The schema does not parse. The message gives line and column of each error.
    #[error("schema {origin}: {detail}")]
    Schema {
        /// The file, or `<text>` for a store built from strings.
        origin: String,
        /// Cedar's errors, one per `; `-separated part.
        detail: String,
    },
    /// The policies do not parse. The message gives line and column of each error.
    #[error("policies {origin}: {detail}")]
    Parse {
        /// The file, or `<text>`.
        origin: String,
        /// Cedar's errors.
        detail: String,
    },
    /// The policies do not validate against the schema in strict mode.
    #[error("policies {origin} fail strict validation: {detail}")]
    Validation {
        /// The file, or `<text>`.
        origin: String,
        /// Each validation error with its line and column.
        detail: String,
    },
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
    /// Per (action, resource): the policies that can apply.
    slices: Slices,
}

impl LoadedPolicies {
    /// The policies that can apply to `action` on `resource` by a task of `client`
    /// (see [`super::slice`]).
    pub(crate) fn applicable(
        &self,
        action: &EntityUid,
        resource: &EntityUid,
        client: &EntityUid,
    ) -> Arc<Slice> {
        self.slices.get(action, resource, client)
    }
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
            current: ArcSwap::from_pointee(compile(policies, schema, &Origins::text())?),
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
        self.current
            .store(Arc::new(compile(policies, schema, &Origins::text())?));
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
                    "policies reloaded"
                );
                self.current.store(Arc::new(loaded));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, path = %files.policies.display(),
                    "policy reload failed; keeping the last good set");
                Err(e)
            }
        }
    }

    /// Polls the files' size and mtime every `interval` and reloads on change, for as
    /// long as the returned guard lives (see [`crate::background`]). A store built
    /// from text has nothing to watch: its task ends at once.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration) -> Background {
        let store = Arc::clone(self);
        Background::spawn("policy-reload", move |stop| async move {
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
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
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
    let origins = Origins {
        policies: files.policies.display().to_string(),
        schema: files.schema.display().to_string(),
    };
    compile(&read(&files.policies)?, &read(&files.schema)?, &origins)
}

/// Names for error messages: the files, or `<text>`.
struct Origins {
    policies: String,
    schema: String,
}

impl Origins {
    fn text() -> Self {
        Self {
            policies: "<text>".to_owned(),
            schema: "<text>".to_owned(),
        }
    }
}

/// Cedar's errors are miette diagnostics whose `Debug` is unreadable and whose
/// `Display` names only the first error without a position; an operator who
/// mistyped a policy needs every error with its line and column.
fn describe(diagnostic: &dyn Diagnostic, src: &str) -> String {
    let mut parts = vec![describe_one(diagnostic, src)];
    if let Some(related) = diagnostic.related() {
        parts.extend(related.map(|d| describe_one(d, src)));
    }
    parts.join("; ")
}

fn describe_one(diagnostic: &dyn Diagnostic, src: &str) -> String {
    let mut out = String::new();
    if let Some(span) = diagnostic.labels().and_then(|mut labels| labels.next()) {
        let (line, column) = line_and_column(src, span.offset());
        out.push_str(&format!("line {line}, column {column}: "));
    }
    out.push_str(&diagnostic.to_string());
    if let Some(help) = diagnostic.help() {
        out.push_str(&format!(" (help: {help})"));
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

/// Parses, renames to `@id`, and validates in strict mode.
fn compile(policies: &str, schema: &str, origins: &Origins) -> Result<LoadedPolicies, PolicyError> {
    let schema_src = schema;
    let (schema, warnings) =
        Schema::from_cedarschema_str(schema).map_err(|e| PolicyError::Schema {
            origin: origins.schema.clone(),
            detail: describe(&e, schema_src),
        })?;
    for w in warnings {
        tracing::warn!(warning = %w, "Cedar schema warning");
    }
    let parsed = PolicySet::from_str(policies).map_err(|e| PolicyError::Parse {
        origin: origins.policies.clone(),
        detail: describe(&e, policies),
    })?;
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
        let msgs: Vec<String> = result
            .validation_errors()
            .map(|e| describe_one(e, policies))
            .collect();
        return Err(PolicyError::Validation {
            origin: origins.policies.clone(),
            detail: msgs.join("; "),
        });
    }
    Ok(LoadedPolicies {
        slices: Slices::new(
            named.clone(),
            TASK_TYPE.parse().expect("valid entity type name"),
        ),
        policies: named,
        schema,
        loaded_at: SystemTime::now(),
    })
}
