// The stock TypeScript MCP SDK (@modelcontextprotocol/sdk, as pinned by
// clients/typescript) against the example MCP server with a bearer token: its
// StaticPrivateKeyJwtProvider takes a ready assertion (the task's JWT-SVID, fetched by
// the caller with the issuer as audience) and finds the token endpoint by the
// specification's discovery (401 -> RFC 9728 -> RFC 8414 -> token -> call).
//
// Run by tests/tests/mcp_oauth.rs (never by hand in CI) with NODE_PATH pointing at
// clients/typescript/node_modules; prints one JSON object (never a token).
//
//   node mcp_oauth.cjs URL SERVER_SPIFFE_ID BUNDLE_PEM_FILE TASK_SPIFFE_ID ASSERTION_FILE

"use strict";

const fs = require("node:fs");
const { Agent, fetch: undiciFetch } = require("undici");
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { StaticPrivateKeyJwtProvider } = require("@modelcontextprotocol/sdk/client/auth-extensions.js");

// The server's SVID names it by one URI SAN and no DNS name: the hostname check is
// replaced by exactly that SPIFFE ID (as @tessera/client's spiffeServerCheck does), the
// chain still verified against the trust domain's bundle.
function spiffeServerCheck(expected) {
  return (_host, cert) => {
    const uris = (cert.subjectaltname || "")
      .split(", ")
      .filter((s) => s.startsWith("URI:"))
      .map((s) => s.slice(4));
    if (uris.length !== 1 || uris[0] !== expected) {
      return new Error(`server presented ${JSON.stringify(uris)}, expected ${expected}`);
    }
    return undefined;
  };
}

async function main() {
  const [url, serverId, bundleFile, taskId, assertionFile] = process.argv.slice(2);
  const issuer = new URL(url).origin;
  const seen = [];
  const dispatcher = new Agent({
    connect: { ca: fs.readFileSync(bundleFile, "utf8"), checkServerIdentity: spiffeServerCheck(serverId) },
  });
  const fetch = async (u, init) => {
    const resp = await undiciFetch(u, { ...init, dispatcher });
    seen.push({ method: (init && init.method) || "GET", path: new URL(String(u)).pathname, status: resp.status });
    return resp;
  };
  const authProvider = new StaticPrivateKeyJwtProvider({
    clientId: taskId,
    jwtBearerAssertion: fs.readFileSync(assertionFile, "utf8").trim(),
    expectedIssuer: issuer,
  });
  const mcp = new Client({ name: "tessera-e2e", version: "0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider, fetch });
  const out = {};
  await mcp.connect(transport);
  out.tools = (await mcp.listTools()).tools.map((t) => t.name).sort();
  const r = await mcp.callTool({ name: "get_pull_request", arguments: { repo: "acme/api", number: 42 } });
  out.allowed = { is_error: Boolean(r.isError), text: (r.content || []).map((c) => c.text || "").join(" ") };
  out.granted_scope = (authProvider.tokens() || {}).scope || null;
  out.trace = seen;
  await mcp.close();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
