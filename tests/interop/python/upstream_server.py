"""An MCP server no one here wrote beyond its tool definitions: the Python MCP SDK's
MCPServer (FastMCP in mcp 1.x) over streamable HTTP on loopback, the upstream the
tessera-gateway tests (crates/tessera-gateway/tests/http_upstream.rs) and bench put
behind the gateway. Tools named as the example "github" server's, so the same Cedar
policies apply.

    upstream_server.py HEADERS_LOG

Binds 127.0.0.1 on a free port and prints `listening on 127.0.0.1:<port>` once it
accepts connections. Every HTTP request is appended to HEADERS_LOG as one JSON object
per line (method, path, headers with names lowercased, body), so a test can check what
reached the upstream (identity headers, never the caller's credential, never a refused
call). HEADERS_LOG may be "-" for none (the bench).
"""

import json
import socket
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("python-github")


@mcp.tool()
def get_pull_request(repo: str, number: int) -> str:
    """Reads one pull request."""
    return f"PR #{number} in {repo}: Fix the flaky test (open)"


@mcp.tool()
def list_pulls(repo: str) -> str:
    """Lists open pull requests."""
    return f"{repo}: #41, #42, #43"


@mcp.tool()
def search_code(query: str) -> str:
    """Searches code."""
    return f"3 matches for {query!r}"


@mcp.tool()
def delete_branch(repo: str, branch: str) -> str:
    """Deletes a branch."""
    return f"deleted {branch} in {repo}"


@mcp.resource("github://acme/widgets/README.md")
def widgets_readme() -> str:
    return "# widgets"


@mcp.resource("github://acme/secrets/README.md")
def secrets_readme() -> str:
    return "# secrets"


class HeaderLog:
    """ASGI middleware: one JSON line per HTTP request, with its headers (names
    lowercased) and its body, written once the body has been read."""

    def __init__(self, app, path):
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.path == "-":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        parts, written = [], False

        def write():
            nonlocal written
            if not written:
                written = True
                body = b"".join(parts).decode("utf-8", "replace")
                line = {"method": scope["method"], "path": scope["path"], "headers": headers, "body": body}
                with open(self.path, "a") as f:
                    f.write(json.dumps(line) + "\n")

        async def logged_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                parts.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    write()
            return msg

        if scope["method"] != "POST":
            write()
        await self.app(scope, logged_receive, send)


def main(argv):
    log = argv[1] if len(argv) > 1 else "-"
    app = HeaderLog(mcp.streamable_http_app(), log)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", backlog=1024)
    server = uvicorn.Server(config)

    async def started():
        print(f"listening on 127.0.0.1:{port}", flush=True)

    orig = server.startup

    async def startup(sockets=None):
        await orig(sockets=sockets)
        await started()

    server.startup = startup
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv)
