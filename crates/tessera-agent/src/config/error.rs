//! What is wrong with a configuration, and where the operator must look to fix it.

use std::fmt;
use std::path::PathBuf;

/// Where a setting's value came from: the place to change it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Nobody set it; the built-in default of this TOML key is in force.
    Default {
        /// The TOML key, dotted (`ca.ttl`).
        key: &'static str,
    },
    /// The config file, at this key (or the whole file when it does not parse).
    File {
        /// The file, when it was read from one.
        path: Option<PathBuf>,
        /// The TOML key, dotted; `None` for the file as a whole.
        key: Option<&'static str>,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: &'static str,
        /// Its value, as far as it is text (config values are no secrets: files
        /// hold the secrets, these name the files).
        value: String,
    },
    /// A command-line flag.
    Flag {
        /// The flag, with its dashes.
        flag: &'static str,
        /// The TOML key it sets.
        key: &'static str,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default { key } => write!(f, "`{key}` (built-in default)"),
            Origin::File { path, key } => {
                if let Some(key) = key {
                    write!(f, "`{key}` in ")?;
                }
                match path {
                    Some(path) => write!(f, "config file {}", path.display()),
                    None => write!(f, "the config text"),
                }
            }
            Origin::Env { var, value } => write!(f, "environment variable {var}={value:?}"),
            Origin::Flag { flag, key } => write!(f, "flag {flag} (`{key}`)"),
        }
    }
}

/// One refused setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the refused value came from.
    pub origin: Origin,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.reason)
    }
}

/// A configuration the agent refuses, with every problem found in it (not just the
/// first), so one fix-and-retry round covers them all.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// Every problem, in the order of the README's configuration table.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// `None` when there is nothing to report.
    pub(super) fn from_problems(problems: Vec<Problem>) -> Option<ConfigError> {
        (!problems.is_empty()).then_some(ConfigError { problems })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}
