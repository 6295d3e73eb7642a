//! Protected Resource Metadata (RFC 9728): how an OAuth client learns, from the server
//! it dials, which authorization server mints tokens for it.
//!
//! A client that gets a `401` follows the challenge's `resource_metadata` URL, or tries
//! the well-known locations itself: `{origin}/.well-known/oauth-protected-resource{path}`
//! for a resource with a path, then `{origin}/.well-known/oauth-protected-resource`.
//! Both answer the same document, whose `resource` is exactly the configured URL: a
//! client compares it with the URL it dialed (RFC 9728 §3.3) and must stop on a
//! mismatch, so this is the URL clients dial, byte for byte.

use http::Uri;
use serde::Serialize;

/// The well-known path prefix of RFC 9728 §3.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Longest resource URL accepted: it is echoed in every challenge header.
const MAX_RESOURCE_URL_LEN: usize = 2048;

/// Why a resource URL or issuer cannot be served as metadata.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceMetadataError {
    /// Not an absolute `https` URL (RFC 9728 §1.2, RFC 8707 §2).
    #[error("{what} {url:?} is not an absolute https URL")]
    NotHttps {
        /// Which setting.
        what: &'static str,
        /// The value.
        url: String,
    },
    /// The resource URL has a query or fragment, or characters a challenge header
    /// cannot carry (a quote, a backslash, whitespace, non-ASCII).
    #[error("{what} {url:?} must have no query, fragment, quote, backslash or whitespace")]
    Unusable {
        /// Which setting.
        what: &'static str,
        /// The value.
        url: String,
    },
    /// A scope in `scopes_supported` is not an OAuth scope token (RFC 6749 §3.3).
    #[error("scope {0:?} is not an OAuth scope token")]
    Scope(String),
}

/// The metadata document of one protected resource, and where it is served.
///
/// Built once from configuration; the JSON is rendered once too.
#[derive(Clone, Debug)]
pub struct ProtectedResourceMetadata {
    resource: String,
    /// `{origin}/.well-known/oauth-protected-resource{path}`.
    metadata_url: String,
    /// The paths the document is served at (the path-specific one first).
    paths: Vec<String>,
    document: Document,
    json: bytes::Bytes,
}

/// The RFC 9728 §2 fields Tessera publishes.
#[derive(Clone, Debug, Serialize)]
struct Document {
    resource: String,
    authorization_servers: Vec<String>,
    /// Tokens go in the `Authorization` header only (never a query or a form field).
    bearer_methods_supported: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes_supported: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_name: Option<String>,
    tls_client_certificate_bound_access_tokens: bool,
}

/// Whether `c` may appear in an OAuth scope token (RFC 6749 §3.3: `%x21 / %x23-5B /
/// %x5D-7E`), which is also what a quoted challenge parameter carries unescaped.
pub(crate) fn is_scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

/// Checks `url` is an absolute https URL without query or fragment that a quoted
/// header parameter can carry as is; returns its origin and path.
fn split_https(what: &'static str, url: &str) -> Result<(String, String), ResourceMetadataError> {
    let not_https = || ResourceMetadataError::NotHttps {
        what,
        url: url.to_owned(),
    };
    let unusable = || ResourceMetadataError::Unusable {
        what,
        url: url.to_owned(),
    };
    if url.len() > MAX_RESOURCE_URL_LEN || !url.chars().all(is_scope_char) {
        return Err(unusable());
    }
    if url.contains(['?', '#']) {
        return Err(unusable());
    }
    let uri: Uri = url.parse().map_err(|_| not_https())?;
    if uri.scheme_str() != Some("https") {
        return Err(not_https());
    }
    let authority = uri.authority().ok_or_else(not_https)?;
    // Userinfo in a resource URL would be echoed to every client.
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(unusable());
    }
    let origin = format!("https://{authority}");
    // `Uri` reports "/" for an empty path too; the URL itself decides.
    let path = url[origin.len()..].to_owned();
    Ok((origin, path))
}

// === impl ProtectedResourceMetadata ===

impl ProtectedResourceMetadata {
    /// Metadata for `resource` (exactly the URL clients dial, e.g.
    /// `https://mcp.example:8443/mcp`) whose tokens come from the authorization server
    /// `issuer` (e.g. `https://mcp.example:8443`).
    ///
    /// # Errors
    /// [`ResourceMetadataError`] for a URL that is not absolute https, has a query, fragment or
    /// userinfo, or holds characters a challenge header cannot carry.
    pub fn new(resource: &str, issuer: &str) -> Result<Self, ResourceMetadataError> {
        let (origin, path) = split_https("resource", resource)?;
        split_https("issuer", issuer)?;
        let trimmed = path.trim_end_matches('/');
        let mut paths = Vec::with_capacity(2);
        if !trimmed.is_empty() {
            paths.push(format!("{WELL_KNOWN_PREFIX}{path}"));
        }
        paths.push(WELL_KNOWN_PREFIX.to_owned());
        let metadata_url = format!("{origin}{}", paths[0]);
        let document = Document {
            resource: resource.to_owned(),
            authorization_servers: vec![issuer.to_owned()],
            bearer_methods_supported: ["header"],
            scopes_supported: None,
            resource_name: None,
            tls_client_certificate_bound_access_tokens: false,
        };
        let mut me = Self {
            resource: resource.to_owned(),
            metadata_url,
            paths,
            document,
            json: bytes::Bytes::new(),
        };
        me.render();
        Ok(me)
    }

    /// Publishes `scopes_supported` (and puts them in the `scope` of a bare `401`
    /// challenge, which MCP clients request when they have no scope of their own).
    /// Without it a client asks for no scope and gets all of its task's, which is what
    /// a task-scoped token should be; set it only to make clients ask for less.
    ///
    /// # Errors
    /// [`ResourceMetadataError::Scope`] for a value that is not an OAuth scope token.
    pub fn with_scopes_supported(
        mut self,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, ResourceMetadataError> {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || !s.chars().all(is_scope_char))
        {
            return Err(ResourceMetadataError::Scope(bad.clone()));
        }
        self.document.scopes_supported = Some(scopes);
        self.render();
        Ok(self)
    }

    /// Publishes a human-readable `resource_name`.
    pub fn with_resource_name(mut self, name: impl Into<String>) -> Self {
        self.document.resource_name = Some(name.into());
        self.render();
        self
    }

    /// Publishes `tls_client_certificate_bound_access_tokens` (RFC 8705 §3.4): set by
    /// [`super::BearerAuthLayer`] from its configuration, so that the document says
    /// what the layer enforces.
    pub(crate) fn with_cert_bound_tokens(mut self, required: bool) -> Self {
        self.document.tls_client_certificate_bound_access_tokens = required;
        self.render();
        self
    }

    fn render(&mut self) {
        // Strings and bools into a Vec: cannot fail.
        self.json = serde_json::to_vec(&self.document)
            .expect("metadata serializes")
            .into();
    }

    /// The resource URL, exactly as configured.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The URL of this document that challenges name (`resource_metadata`): the
    /// path-specific well-known URL.
    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// The request paths the document is served at: the path-specific one (when the
    /// resource has a path) and the bare well-known path.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// Whether a request for `path` asks for this document.
    pub fn serves(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }

    /// The published scopes, if configured.
    pub fn scopes_supported(&self) -> Option<&[String]> {
        self.document.scopes_supported.as_deref()
    }

    /// The JSON document.
    pub fn json(&self) -> &bytes::Bytes {
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_at_both_well_known_paths_with_the_exact_resource() {
        let m =
            ProtectedResourceMetadata::new("https://127.0.0.1:8443/mcp", "https://127.0.0.1:8443")
                .unwrap();
        assert_eq!(
            m.metadata_url(),
            "https://127.0.0.1:8443/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            m.paths(),
            [
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        assert!(m.serves("/.well-known/oauth-protected-resource"));
        assert!(!m.serves("/.well-known/oauth-protected-resource/other"));
        let doc: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "resource": "https://127.0.0.1:8443/mcp",
                "authorization_servers": ["https://127.0.0.1:8443"],
                "bearer_methods_supported": ["header"],
                "tls_client_certificate_bound_access_tokens": false,
            })
        );
    }

    #[test]
    fn a_trailing_slash_and_a_bare_origin_stay_exact() {
        let m = ProtectedResourceMetadata::new("https://mcp.example/mcp/", "https://mcp.example")
            .unwrap();
        assert_eq!(m.resource(), "https://mcp.example/mcp/");
        assert_eq!(
            m.metadata_url(),
            "https://mcp.example/.well-known/oauth-protected-resource/mcp/"
        );
        let bare =
            ProtectedResourceMetadata::new("https://mcp.example", "https://mcp.example").unwrap();
        assert_eq!(bare.paths(), ["/.well-known/oauth-protected-resource"]);
        assert_eq!(
            bare.metadata_url(),
            "https://mcp.example/.well-known/oauth-protected-resource"
        );
        let doc: serde_json::Value = serde_json::from_slice(bare.json()).unwrap();
        assert_eq!(doc["resource"], "https://mcp.example");
    }

    #[test]
    fn optional_fields_are_published_when_set() {
        let m = ProtectedResourceMetadata::new("https://h/mcp", "https://h")
            .unwrap()
            .with_scopes_supported(["github/tool/get_pull_request"])
            .unwrap()
            .with_resource_name("GitHub")
            .with_cert_bound_tokens(true);
        let doc: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        assert_eq!(
            doc["scopes_supported"],
            serde_json::json!(["github/tool/get_pull_request"])
        );
        assert_eq!(doc["resource_name"], "GitHub");
        assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
        assert!(matches!(
            ProtectedResourceMetadata::new("https://h/mcp", "https://h")
                .unwrap()
                .with_scopes_supported(["two words"]),
            Err(ResourceMetadataError::Scope(_))
        ));
    }

    #[test]
    fn refuses_urls_a_client_or_a_header_could_misread() {
        for (resource, issuer) in [
            ("http://h/mcp", "https://h"),
            ("https://h/mcp", "http://h"),
            ("/mcp", "https://h"),
            ("https://h/mcp?x=1", "https://h"),
            ("https://h/mcp#f", "https://h"),
            ("https://user@h/mcp", "https://h"),
            ("https://h/m\"cp", "https://h"),
            ("https://h/m cp", "https://h"),
            ("https://h/m\\cp", "https://h"),
            ("https://h/mcé", "https://h"),
        ] {
            assert!(
                ProtectedResourceMetadata::new(resource, issuer).is_err(),
                "{resource} / {issuer}"
            );
        }
        let long = format!("https://h/{}", "a".repeat(MAX_RESOURCE_URL_LEN));
        assert!(ProtectedResourceMetadata::new(&long, "https://h").is_err());
    }
}
