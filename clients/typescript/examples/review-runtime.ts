// A Node agent runtime on Tessera, telling the `tessera demo` story against the
// example MCP server ("github"): one task for SUBJECT, its SVID on every MCP
// connection (the MCP SDK's StreamableHTTPClientTransport with the task's fetch), the
// server verified by SPIFFE ID, and the task ended however the run ends.
//
// 1. begin a task (its SVID); 2. get_pull_request: allowed; 3. list_pulls: consented
// but not requested -> out_of_scope; 4. delete_branch {branch: main}: forbidden by the
// server's Cedar policy; 5. a task asking for a scope no consent covers ->
// ConsentRequired at BeginTask; 6. EndTask, then a call on the still-open session ->
// refused as revoked.
//
//   node dist/examples/review-runtime.js --socket /run/tessera/workload.sock \
//       --url https://127.0.0.1:8443/mcp --subject alice@example.com [--json]

import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { ConsentRequired, Task, TesseraError, withTask } from "../src/index";

type ToolResult = { isError?: boolean; content: { text?: string }[]; structuredContent?: any };

function outcome(r: ToolResult): Record<string, unknown> {
  const text = r.content.map((c) => c.text ?? "").join("\n");
  const auth = r.isError ? r.structuredContent?.authorization : undefined;
  if (auth) return { outcome: "denied", reason: auth.reason, policy_ids: auth.policy_ids ?? [] };
  return r.isError ? { outcome: "tool_error", text } : { outcome: "ok", text };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      socket: { type: "string" },
      url: { type: "string" },
      server: { type: "string", default: "github" },
      subject: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  if (!values.url || !values.subject) {
    console.error("usage: review-runtime --url URL --subject SUBJECT [--socket PATH] [--server NAME] [--json]");
    return 64;
  }
  const report: Record<string, any> = { runtime: "node", calls: [] };
  try {
    await withTask(
      {
        server: values.server!,
        subject: values.subject,
        scopes: ["github/tool/get_pull_request", "github/tool/delete_branch"],
        purpose: "review PR 42 in acme/api",
        socket: values.socket,
      },
      async (task) => {
        report.task = { id: task.id, spiffe_id: task.spiffeId, subject: task.info.subject, scopes: task.info.scopes };
        const mcp = new Client({ name: "tessera-review-runtime", version: "0.1.0" });
        await mcp.connect(new StreamableHTTPClientTransport(new URL(values.url!), { fetch: task.fetch }));
        const call = async (name: string, args: Record<string, unknown>) =>
          outcome((await mcp.callTool({ name, arguments: args })) as ToolResult);
        for (const [name, args] of [
          ["get_pull_request", { repo: "acme/api", number: 42 }],
          ["list_pulls", { repo: "acme/api" }],
          ["delete_branch", { repo: "acme/api", branch: "main" }],
        ] as const) {
          report.calls.push({ tool: name, arguments: args, ...(await call(name, args)) });
        }
        try {
          await (await Task.begin({ server: values.server!, subject: values.subject!, scopes: ["github/tool/search_code"], socket: values.socket })).end();
          report.consent_refusal = { outcome: "begun" };
        } catch (e) {
          if (!(e instanceof ConsentRequired)) throw e;
          report.consent_refusal = { outcome: "refused", missing: e.missing, message: e.agentMessage };
        }
        // End the task while the MCP session is open: the very next call on it is refused.
        const started = performance.now();
        await task.end();
        let attempts = 0;
        let after: Record<string, unknown>;
        for (;;) {
          attempts++;
          after = await call("get_pull_request", { repo: "acme/api", number: 42 }).catch((e) => ({
            outcome: "client_refused",
            message: String(e),
          }));
          if (after.outcome !== "ok" || performance.now() - started > 5000) break;
          await new Promise((r) => setTimeout(r, 0.5));
        }
        report.after_end = { ...after, refused_after_ms: Math.round((performance.now() - started) * 100) / 100, attempts };
        report.end_reason = task.endReason;
        await mcp.close().catch(() => undefined);
      },
    );
  } catch (e) {
    if (!(e instanceof TesseraError)) throw e;
    report.error = { type: e.name, message: e.message };
    console.log(values.json ? JSON.stringify(report) : `error: ${e.message}`);
    return 2;
  }
  if (values.json) {
    console.log(JSON.stringify(report));
    return 0;
  }
  console.log(`task ${report.task.spiffe_id} for ${report.task.subject}`);
  for (const c of report.calls) console.log(`  ${c.tool.padEnd(18)} ${String(c.outcome).padEnd(8)} ${c.reason ?? String(c.text).split("\n")[0]} ${(c.policy_ids ?? []).join(" ")}`);
  console.log(`  search_code task   ${report.consent_refusal.outcome}`);
  console.log(`  after EndTask      ${report.after_end.outcome} ${report.after_end.reason ?? ""} (${report.after_end.refused_after_ms} ms)`);
  return 0;
}

main().then((code) => process.exit(code));
