//! The MCP operation being authorized.

use tessera_identity::ScopeKind;

/// An MCP method that operates on one named target and is therefore authorized per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum McpMethod {
    /// `tools/call`: the target is the tool name.
    ToolsCall,
    /// `resources/read`: the target is the resource URI.
    ResourcesRead,
    /// `prompts/get`: the target is the prompt name.
    PromptsGet,
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
    /// The JSON-RPC method name, also the Cedar action id (`Action::"tools/call"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToolsCall => "tools/call",
            Self::ResourcesRead => "resources/read",
            Self::PromptsGet => "prompts/get",
        }
    }

    /// The scope kind this method needs.
    pub fn scope_kind(self) -> ScopeKind {
        match self {
            Self::ToolsCall => ScopeKind::Tool,
            Self::ResourcesRead => ScopeKind::Resource,
            Self::PromptsGet => ScopeKind::Prompt,
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

    /// The Cedar entity type of the resource: `Tool`, `Resource` or `Prompt`.
    pub fn resource_type(self) -> &'static str {
        match self {
            Self::ToolsCall => "Tool",
            Self::ResourcesRead => "Resource",
            Self::PromptsGet => "Prompt",
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
