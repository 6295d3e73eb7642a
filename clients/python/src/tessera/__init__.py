"""Tessera client for Python agent runtimes.

Begin a task for one MCP server and one human subject, use its X.509-SVID for mTLS
(an ``ssl.SSLContext``, PEM files, an httpx2 client, or an MCP SDK client), follow its
rotations, and end it on every exit path::

    import tessera

    async with tessera.Task(server="github", subject="alice@acme.corp",
                            scopes=["github/tool/get_pull_request"]) as task:
        async with task.mcp("https://127.0.0.1:8443/mcp") as mcp:
            print(await mcp.call_tool("get_pull_request", {"repo": "acme/api", "number": 42}))
"""

from .errors import (
    AgentUnreachable,
    ConsentRequired,
    NotAttested,
    ServerIdentityMismatch,
    TaskEnded,
    TaskRefused,
    TesseraError,
    TooManyTasks,
)
from .svid import Svid, SvidFiles
from .task import DEFAULT_SOCKET, Task, TaskInfo
from .tls import TaskSSLContext, server_spiffe_id

__all__ = [
    "AgentUnreachable",
    "ConsentRequired",
    "DEFAULT_SOCKET",
    "NotAttested",
    "ServerIdentityMismatch",
    "Svid",
    "SvidFiles",
    "Task",
    "TaskEnded",
    "TaskInfo",
    "TaskRefused",
    "TaskSSLContext",
    "TesseraError",
    "TooManyTasks",
    "server_spiffe_id",
]

__version__ = "0.1.0"
