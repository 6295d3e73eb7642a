//! An upstream MCP server over streamable HTTP: a loopback URL or a unix socket.
