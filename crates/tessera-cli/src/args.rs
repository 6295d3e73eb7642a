//! Argument types and checks shared by `consent` and `task`: subjects, purposes, expiry
//! times, MCP servers, and the rule that every scope names the `--server` it is for.
//!
//! Checking locally gives a precise message before anything reaches the agent; the agent
//! stays the judge (it checks everything again).

use std::fmt;
use std::str::FromStr;

use clap::error::ErrorKind;
use clap::{ArgMatches, Args, FromArgMatches};
use tessera_identity::{IdError, MAX_PURPOSE_LEN, MAX_SUBJECT_LEN, Scope, ServerId, ServerName};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Checks that need more than one argument, run right after parsing.
pub trait Validate {
    /// Why the combination of arguments is refused, if it is.
    fn validate(&self) -> Result<(), String>;
}

/// Arguments `T` that passed [`Validate::validate`] as part of parsing, so
/// `Cli::try_parse_from` already refuses them with a usage error (exit status 2).
#[derive(Debug, Clone)]
pub struct Checked<T>(pub T);

impl<T> std::ops::Deref for Checked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: FromArgMatches + Validate> FromArgMatches for Checked<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let args = T::from_arg_matches(matches)?;
        args.validate()
            .map_err(|msg| clap::Error::raw(ErrorKind::ValueValidation, msg))?;
        Ok(Self(args))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<T: Args + Validate> Args for Checked<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        T::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        T::augment_args_for_update(cmd)
    }
}

/// Refuses scopes that are not for `server`: a consent or a task covers one server.
pub fn check_scope_servers(server: &ServerName, scopes: &[Scope]) -> Result<(), String> {
    match scopes.iter().find(|scope| scope.server() != server) {
        Some(scope) => Err(format!(
            "--scope {scope} is for server {:?}, not for --server {:?}; every scope must \
             start with \"{server}/\" (a consent or a task covers one server)",
            scope.server().as_str(),
            server.as_str(),
        )),
        None => Ok(()),
    }
}

/// The on-behalf-of subject: 1 to 256 bytes, no control or bidirectional-override
/// characters (the same rule as the task claims it ends up in).
pub fn parse_subject(input: &str) -> Result<String, String> {
    if input.trim().is_empty() {
        return Err("the subject is empty; name the human, e.g. alice@acme.corp".to_owned());
    }
    if input.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "the subject is {} bytes, longer than the maximum of {MAX_SUBJECT_LEN}",
            input.len()
        ));
    }
    check_text("subject", input)?;
    Ok(input.to_owned())
}

/// A task's purpose: up to 1024 bytes of text without control characters.
pub fn parse_purpose(input: &str) -> Result<String, String> {
    if input.len() > MAX_PURPOSE_LEN {
        return Err(format!(
            "the purpose is {} bytes, longer than the maximum of {MAX_PURPOSE_LEN}",
            input.len()
        ));
    }
    check_text("purpose", input)?;
    Ok(input.to_owned())
}

fn check_text(field: &str, text: &str) -> Result<(), String> {
    let forbidden = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
            )
    };
    match text.char_indices().find(|&(_, c)| forbidden(c)) {
        Some((index, c)) => Err(format!(
            "the {field} contains the control character U+{:04X} at byte {index}",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// An absolute expiry time in RFC 3339 (e.g. `2025-07-01T18:00:00Z`) that lies in the
/// future; returns Unix seconds.
pub fn parse_expires(input: &str) -> Result<i64, String> {
    let at = OffsetDateTime::parse(input, &Rfc3339).map_err(|err| {
        format!("invalid time {input:?}: expected RFC 3339, e.g. 2025-07-01T18:00:00Z ({err})")
    })?;
    let unix = at.unix_timestamp();
    if unix <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(format!("{input} is in the past"));
    }
    Ok(unix)
}

/// An MCP server as `--server` takes it for a task: a name (`github`) or a full SPIFFE ID
/// (`spiffe://<td>/mcp/github`). The agent receives it as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerArg {
    /// As written on the command line.
    pub raw: String,
    /// The server name, which scopes start with.
    pub name: ServerName,
}

impl FromStr for ServerArg {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = if s.starts_with("spiffe:") {
            s.parse::<ServerId>()?.name
        } else {
            s.parse()?
        };
        Ok(Self {
            raw: s.to_owned(),
            name,
        })
    }
}

impl fmt::Display for ServerArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn scopes_must_all_be_for_the_server() {
        let github: ServerName = "github".parse().unwrap();
        assert!(
            check_scope_servers(&github, &scopes(&["github/tool/*", "github/prompt/review"]))
                .is_ok()
        );
        let err = check_scope_servers(&github, &scopes(&["github/tool/*", "docs/resource/x"]))
            .unwrap_err();
        assert!(
            err.contains("--scope docs/resource/x is for server \"docs\""),
            "{err}"
        );
        assert!(err.contains("not for --server \"github\""), "{err}");
    }

    #[test]
    fn subject_and_purpose_refuse_control_characters() {
        assert_eq!(parse_subject("alice@acme.corp").unwrap(), "alice@acme.corp");
        assert!(parse_subject("").unwrap_err().contains("empty"));
        assert!(parse_subject("alice\nroot").unwrap_err().contains("U+000A"));
        assert!(parse_subject(&"a".repeat(257)).unwrap_err().contains("256"));
        assert_eq!(parse_purpose("").unwrap(), "");
        assert!(parse_purpose("x\u{202E}y").unwrap_err().contains("U+202E"));
        assert!(parse_purpose(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn expires_must_be_rfc3339_and_in_the_future() {
        assert_eq!(
            parse_expires("2099-01-01T00:00:00Z").unwrap(),
            4_070_908_800
        );
        assert!(
            parse_expires("2000-01-01T00:00:00Z")
                .unwrap_err()
                .contains("in the past")
        );
        assert!(parse_expires("tomorrow").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn server_arg_takes_a_name_or_a_server_spiffe_id() {
        let arg: ServerArg = "github".parse().unwrap();
        assert_eq!(arg.name.as_str(), "github");
        let arg: ServerArg = "spiffe://acme.corp/mcp/github".parse().unwrap();
        assert_eq!(
            (arg.name.as_str(), arg.raw.as_str()),
            ("github", "spiffe://acme.corp/mcp/github")
        );
        assert!("spiffe://acme.corp/client/x".parse::<ServerArg>().is_err());
        assert!("git hub".parse::<ServerArg>().is_err());
    }
}
