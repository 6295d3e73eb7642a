// BeginTask -> first MCP call, timed in-process (start-up excluded). Run by
// `cargo bench -p tessera-e2e --bench clients`; prints {"samples_ms": [...]}: one sample
// per task: BeginTask, MCP session (TLS handshake, initialize), one tools/call
// answered. EndTask and closing the session are not timed.
import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { withTask } from "../src/index";

async function main() {
  const { values } = parseArgs({
    options: {
      socket: { type: "string" },
      url: { type: "string" },
      subject: { type: "string" },
      iterations: { type: "string", default: "40" },
      warmup: { type: "string", default: "3" },
    },
  });
  const warmup = Number(values.warmup);
  const samples: number[] = [];
  for (let i = 0; i < warmup + Number(values.iterations); i++) {
    const started = performance.now();
    let elapsed = 0;
    await withTask(
      { server: "github", subject: values.subject!, scopes: ["github/tool/get_pull_request"], purpose: "bench", socket: values.socket },
      async (task) => {
        const mcp = new Client({ name: "tessera-bench", version: "0.1.0" });
        await mcp.connect(new StreamableHTTPClientTransport(new URL(values.url!), { fetch: task.fetch }));
        const r = (await mcp.callTool({ name: "get_pull_request", arguments: { repo: "acme/api", number: 1 } })) as { isError?: boolean };
        elapsed = performance.now() - started;
        if (r.isError) throw new Error(`the call was refused: ${JSON.stringify(r)}`);
        await mcp.close();
      },
    );
    if (i >= warmup) samples.push(Math.round(elapsed * 1000) / 1000);
  }
  console.log(JSON.stringify({ samples_ms: samples }));
  process.exit(0);
}

void main();
