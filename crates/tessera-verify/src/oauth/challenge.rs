//! The `WWW-Authenticate: Bearer` challenges of a protected resource (RFC 6750 §3,
//! RFC 9728 §5.1) and the responses that carry them.
//!
//! | status | when | challenge |
//! |---|---|---|
//! | `401` | no credential, or only one this server does not accept | `Bearer resource_metadata="…"` (+ `scope="…"` when scopes are published) |
//! | `401` | a token that does not verify, is expired, of an ended task, or bound to another certificate | `Bearer error="invalid_token", error_description="…", resource_metadata="…"` |
//! | `400` | a malformed `Authorization` header, several of them, or a token elsewhere | `Bearer error="invalid_request", error_description="…", resource_metadata="…"` |
//! | `403` | an operation within the task's scopes but not the token's | `Bearer error="insufficient_scope", scope="…", resource_metadata="…", error_description="…"` |
//!
//! Every parameter value is a quoted string built only from characters RFC 6750 allows
//! there unescaped (`error_description` and `scope`: printable ASCII without `"` and
//! `\`); anything else is replaced, never escaped, so no value can end its quotes.

use http::{HeaderValue, StatusCode};

/// What a refusal says to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// No credential (or one of a kind not accepted): authenticate. `401`.
    Authenticate,
    /// The token is no good. `401` `invalid_token`.
    InvalidToken(String),
    /// The request is malformed. `400` `invalid_request`.
    InvalidRequest(&'static str),
    /// The token lacks `scope`, which the task holds: get a token for it. `403`
    /// `insufficient_scope`.
    InsufficientScope {
        /// The scope to ask for; `None` if it cannot be written as a scope token.
        scope: Option<String>,
    },
}

/// `value` with every character a quoted challenge parameter may not carry as is
/// (anything but `%x20-21 / %x23-5B / %x5D-7E`) replaced by `?`, cut to `max` bytes.
fn quotable(value: &str, max: usize) -> String {
    value
        .chars()
        .map(|c| match c {
            '\x20' | '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E' => c,
            _ => '?',
        })
        .take(max)
        .collect()
}

/// Longest `error_description` sent.
const MAX_DESCRIPTION: usize = 200;

// === impl Challenge ===

impl Challenge {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Authenticate | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The `WWW-Authenticate` value, naming the metadata at `metadata_url` and, on a
    /// bare `401`, the `published` scopes.
    pub(crate) fn header(&self, metadata_url: &str, published: Option<&[String]>) -> HeaderValue {
        let metadata = quotable(metadata_url, usize::MAX);
        let value = match self {
            Self::Authenticate => match published {
                Some(scopes) if !scopes.is_empty() => format!(
                    "Bearer resource_metadata=\"{metadata}\", scope=\"{}\"",
                    quotable(&scopes.join(" "), usize::MAX)
                ),
                _ => format!("Bearer resource_metadata=\"{metadata}\""),
            },
            Self::InvalidToken(description) => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{metadata}\"",
                quotable(description, MAX_DESCRIPTION)
            ),
            Self::InvalidRequest(description) => format!(
                "Bearer error=\"invalid_request\", error_description=\"{}\", resource_metadata=\"{metadata}\"",
                quotable(description, MAX_DESCRIPTION)
            ),
            Self::InsufficientScope { scope: Some(scope) } => format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{metadata}\", error_description=\"the access token does not grant {}\"",
                quotable(scope, usize::MAX),
                quotable(scope, MAX_DESCRIPTION)
            ),
            Self::InsufficientScope { scope: None } => format!(
                "Bearer error=\"insufficient_scope\", resource_metadata=\"{metadata}\", error_description=\"the access token does not grant this operation\""
            ),
        };
        // Only printable ASCII went in: always a valid header value.
        HeaderValue::from_str(&value).expect("printable ASCII is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRM: &str = "https://h/.well-known/oauth-protected-resource/mcp";

    #[test]
    fn each_challenge_reads_as_the_spec_writes_it() {
        let cases = [
            (
                Challenge::Authenticate,
                401,
                r#"Bearer resource_metadata="https://h/.well-known/oauth-protected-resource/mcp""#,
            ),
            (
                Challenge::InvalidToken("at_expired".into()),
                401,
                r#"Bearer error="invalid_token", error_description="at_expired", resource_metadata="https://h/.well-known/oauth-protected-resource/mcp""#,
            ),
            (
                Challenge::InvalidRequest("several Authorization headers"),
                400,
                r#"Bearer error="invalid_request", error_description="several Authorization headers", resource_metadata="https://h/.well-known/oauth-protected-resource/mcp""#,
            ),
            (
                Challenge::InsufficientScope {
                    scope: Some("github/tool/push".into()),
                },
                403,
                r#"Bearer error="insufficient_scope", scope="github/tool/push", resource_metadata="https://h/.well-known/oauth-protected-resource/mcp", error_description="the access token does not grant github/tool/push""#,
            ),
        ];
        for (challenge, status, header) in cases {
            assert_eq!(challenge.status().as_u16(), status, "{challenge:?}");
            assert_eq!(challenge.header(PRM, None), header);
        }
        let scopes = ["a/tool/x".to_owned(), "a/tool/y".to_owned()];
        assert_eq!(
            Challenge::Authenticate.header(PRM, Some(&scopes)),
            r#"Bearer resource_metadata="https://h/.well-known/oauth-protected-resource/mcp", scope="a/tool/x a/tool/y""#
        );
    }

    #[test]
    fn no_value_can_leave_its_quotes() {
        let hostile = "x\", error=\"none\r\nSet-Cookie: a=b\\ é";
        let h = Challenge::InvalidToken(hostile.into()).header(PRM, None);
        let text = h.to_str().unwrap();
        assert_eq!(text.matches('"').count(), 6, "three parameters: {text}");
        assert!(!text.contains('\\') && !text.contains('\r'), "{text}");
        let long = Challenge::InvalidToken("a".repeat(10_000)).header(PRM, None);
        assert!(long.len() < 400);
    }
}
