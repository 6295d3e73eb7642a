"""A LangGraph-style agent runtime on Tessera: a small state graph whose tool node
calls the example MCP server ("github") with the task's own credential.

No LLM here: the "planner" is a fixed plan, because what this shows is the plumbing
every real runtime (LangGraph, CrewAI, an agent SDK) needs around its tool calls: one
task per unit of work, its SVID on every MCP connection, the server verified by SPIFFE
ID, and the task ended however the run ends. It tells the `tessera demo` story:

1. begin a task for SUBJECT (its SVID and signed claims);
2. get_pull_request: allowed;
3. list_pulls: the consent allows it, the task did not ask for it -> out_of_scope;
4. delete_branch {branch: main}: within scope, forbidden by the server's Cedar policy;
5. a task asking for a scope no consent covers -> tessera.ConsentRequired at BeginTask;
6. EndTask, then a call on the still-open MCP session -> refused as revoked.

    python review_runtime.py --socket /run/tessera/workload.sock \
        --url https://127.0.0.1:8443/mcp --subject alice@example.com [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import tessera

SCOPES = ["github/tool/get_pull_request", "github/tool/delete_branch"]


def outcome(result) -> dict[str, Any]:
    """A tool result as the demo reports it: ok, or denied with reason and policies."""
    texts = "\n".join(getattr(c, "text", "") for c in result.content)
    auth = (result.structured_content or {}).get("authorization") if result.is_error else None
    if auth:
        return {"outcome": "denied", "reason": auth.get("reason"), "policy_ids": auth.get("policy_ids", [])}
    if result.is_error:
        return {"outcome": "tool_error", "text": texts}
    return {"outcome": "ok", "text": texts}


# --- a minimal state graph, in the shape LangGraph gives one ----------------------

State = dict[str, Any]
Node = Callable[[State], Awaitable[State]]


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[str, str] = field(default_factory=dict)

    def add_node(self, name: str, fn: Node) -> None:
        self.nodes[name] = fn

    def add_edge(self, a: str, b: str) -> None:
        self.edges[a] = b

    async def run(self, start: str, state: State) -> State:
        node = start
        while node != "END":
            state = await self.nodes[node](state)
            node = self.edges[node]
        return state


def build_graph(mcp) -> Graph:
    async def tool(state: State, name: str, args: dict) -> State:
        result = outcome(await mcp.call_tool(name, args))
        state["calls"].append({"tool": name, "arguments": args, **result})
        return state

    g = Graph()
    g.add_node("read_pr", lambda s: tool(s, "get_pull_request", {"repo": "acme/api", "number": 42}))
    g.add_node("triage", lambda s: tool(s, "list_pulls", {"repo": "acme/api"}))
    g.add_node("cleanup", lambda s: tool(s, "delete_branch", {"repo": "acme/api", "branch": "main"}))
    g.add_edge("read_pr", "triage")
    g.add_edge("triage", "cleanup")
    g.add_edge("cleanup", "END")
    return g


async def run(args) -> dict[str, Any]:
    report: dict[str, Any] = {"runtime": "python", "calls": []}
    task = tessera.Task(
        server=args.server,
        subject=args.subject,
        scopes=SCOPES,
        purpose="review PR 42 in acme/api",
        socket=args.socket,
    )
    async with task:
        report["task"] = {
            "id": task.id,
            "spiffe_id": task.spiffe_id,
            "subject": task.info.subject,
            "scopes": list(task.info.scopes),
            "deadline": task.info.deadline.isoformat(),
        }
        async with task.mcp(args.url) as mcp:
            state = await build_graph(mcp).run("read_pr", {"calls": []})
            report["calls"] = state["calls"]

            # A task whose scopes no consent covers never gets a credential.
            try:
                tessera.Task(server=args.server, subject=args.subject,
                             scopes=["github/tool/search_code"], socket=args.socket).begin().end()
                report["consent_refusal"] = {"outcome": "begun"}
            except tessera.ConsentRequired as e:
                report["consent_refusal"] = {"outcome": "refused", "missing": e.missing, "message": e.agent_message}

            # End the task while the MCP session is still open: the very next call on it
            # is refused, however long the certificate would have stayed valid.
            started = time.perf_counter()
            task.end()
            attempts = 0
            while True:
                attempts += 1
                after = outcome(await mcp.call_tool("get_pull_request", {"repo": "acme/api", "number": 42}))
                if after["outcome"] != "ok" or time.perf_counter() - started > 5:
                    break
                await asyncio.sleep(0.0005)
            after["refused_after_ms"] = round((time.perf_counter() - started) * 1000, 2)
            after["attempts"] = attempts
            report["after_end"] = after
    report["end_reason"] = task.end_reason
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", default=None, help="the agent's workload socket (default: SPIFFE_ENDPOINT_SOCKET)")
    p.add_argument("--url", required=True, help="the MCP endpoint, e.g. https://127.0.0.1:8443/mcp")
    p.add_argument("--server", default="github")
    p.add_argument("--subject", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except tessera.TesseraError as e:
        report = {"runtime": "python", "error": {"type": type(e).__name__, "message": str(e)}}
        print(json.dumps(report) if args.json else f"error: {e}", file=sys.stdout if args.json else sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"task {report['task']['spiffe_id']} for {report['task']['subject']}")
    for c in report["calls"]:
        detail = c.get("text", "").splitlines()[0] if c["outcome"] == "ok" else c.get("reason")
        print(f"  {c['tool']:<18} {c['outcome']:<8} {detail} {' '.join(c.get('policy_ids', []))}")
    print(f"  search_code task   {report['consent_refusal']['outcome']}")
    a = report["after_end"]
    print(f"  after EndTask      {a['outcome']:<8} {a.get('reason')} ({a['refused_after_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
