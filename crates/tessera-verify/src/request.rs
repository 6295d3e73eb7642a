//! The MCP operation being authorized.

use tessera_identity::ScopeKind;

/// The MCP method being authorized: one of the three that operate on one named target
/// (checked against the task's scopes and Cedar), or another decided on the caller's
/// credential alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum McpMethod {
    /// `tools/call`: the target is the tool name.
    ToolsCall,
    /// `resources/read`: the target is the resource URI.
    ResourcesRead,
    /// `prompts/get`: the target is the prompt name.
    PromptsGet,
    /// A method that names no tool, resource or prompt of its own (`initialize`, `ping`,
    /// the lists, `logging/setLevel`, ...): allowed when the caller's credential passes
    /// the checks every request gets (a live task of this server, not revoked, feed
    /// fresh), with no scope or policy of its own. The JSON-RPC method name; the target
    /// is empty or says what the method acts on.
    Untargeted(&'static str),
}

/// One request to authorize: method, target, and the call's arguments (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct McpRequest {
    /// The method.
    pub method: McpMethod,
    /// Tool name, resource URI, or prompt name.
    pub target: String,
    /// The JSON arguments of the call (`tools/call` `arguments`, `prompts/get` `arguments`);
    /// `None` when absent. Exposed to Cedar as `context.arguments`.
    pub arguments: Option<serde_json::Map<String, serde_json::Value>>,
}

// === impl McpMethod ===

impl McpMethod {
    /// The JSON-RPC method name; for the targeted methods also the Cedar action id
    /// (`Action::"tools/call"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToolsCall => "tools/call",
            Self::ResourcesRead => "resources/read",
            Self::PromptsGet => "prompts/get",
            Self::Untargeted(method) => method,
        }
    }

    /// The scope kind this method needs; `None` for an untargeted method.
    pub fn scope_kind(self) -> Option<ScopeKind> {
        match self {
            Self::ToolsCall => Some(ScopeKind::Tool),
            Self::ResourcesRead => Some(ScopeKind::Resource),
            Self::PromptsGet => Some(ScopeKind::Prompt),
            Self::Untargeted(_) => None,
        }
    }

    /// The method that uses a target of `kind`.
    pub fn for_kind(kind: ScopeKind) -> Self {
        match kind {
            ScopeKind::Tool => Self::ToolsCall,
            ScopeKind::Resource => Self::ResourcesRead,
            ScopeKind::Prompt => Self::PromptsGet,
        }
    }

    /// The Cedar entity type of the resource: `Tool`, `Resource` or `Prompt`; `None` for
    /// an untargeted method.
    pub fn resource_type(self) -> Option<&'static str> {
        match self {
            Self::ToolsCall => Some("Tool"),
            Self::ResourcesRead => Some("Resource"),
            Self::PromptsGet => Some("Prompt"),
            Self::Untargeted(_) => None,
        }
    }
}

// === impl McpRequest ===

impl McpRequest {
    /// A `tools/call` of `name` with `arguments`.
    pub fn call_tool(
        name: impl Into<String>,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        Self {
            method: McpMethod::ToolsCall,
            target: name.into(),
            arguments,
        }
    }

    /// A `resources/read` of `uri`.
    pub fn read_resource(uri: impl Into<String>) -> Self {
        Self {
            method: McpMethod::ResourcesRead,
            target: uri.into(),
            arguments: None,
        }
    }

    /// An untargeted `method` (see [`McpMethod::Untargeted`]), acting on `target` (may
    /// be empty).
    pub fn untargeted(method: &'static str, target: impl Into<String>) -> Self {
        Self {
            method: McpMethod::Untargeted(method),
            target: target.into(),
            arguments: None,
        }
    }

    /// A `prompts/get` of `name` with `arguments`.
    pub fn get_prompt(
        name: impl Into<String>,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        Self {
            method: McpMethod::PromptsGet,
            target: name.into(),
            arguments,
        }
    }
}
