"""BeginTask -> first MCP call, timed in-process (interpreter start-up excluded).

Run by `cargo bench -p tessera-e2e --bench clients`; prints one JSON object:
{"samples_ms": [...]} with one sample per task: BeginTask, MCP session (TLS handshake,
initialize), one tools/call answered. EndTask and closing the session are not timed.
"""

import argparse
import asyncio
import json
import time

import tessera


async def main(args):
    samples = []
    for i in range(args.warmup + args.iterations):
        started = time.perf_counter()
        async with tessera.Task(server="github", subject=args.subject,
                                scopes=["github/tool/get_pull_request"], purpose="bench",
                                socket=args.socket) as task:
            async with task.mcp(args.url) as mcp:
                result = await mcp.call_tool("get_pull_request", {"repo": "acme/api", "number": 1})
                elapsed = time.perf_counter() - started
                if result.is_error:
                    raise SystemExit(f"the call was refused: {result}")
        if i >= args.warmup:
            samples.append(round(elapsed * 1000, 3))
    print(json.dumps({"samples_ms": samples}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    asyncio.run(main(p.parse_args()))
