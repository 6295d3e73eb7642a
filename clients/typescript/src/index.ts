// Tessera client for Node agent runtimes: begin a task for one MCP server and one
// human subject, present its X.509-SVID over mTLS (a fetch for the MCP SDK's
// StreamableHTTPClientTransport, or TLS options), follow its rotations, end it on
// every exit path.
//
//   await withTask({ server: "github", subject: "alice@acme.corp", scopes: ["github/tool/get_pull_request"] }, async (task) => {
//     const mcp = new Client({ name: "my-runtime", version: "1.0.0" });
//     await mcp.connect(new StreamableHTTPClientTransport(new URL(url), { fetch: task.fetch }));
//     console.log(await mcp.callTool({ name: "get_pull_request", arguments: { repo: "acme/api", number: 42 } }));
//   });

export {
  AgentUnreachable,
  ConsentRequired,
  fromStatus,
  NotAttested,
  ServerIdentityMismatch,
  TaskRefused,
  TesseraError,
  TooManyTasks,
} from "./errors";
export { Svid, splitDerCertificates } from "./svid";
export {
  DEFAULT_SOCKET,
  serverSpiffeId,
  socketPath,
  spiffeServerCheck,
  Task,
  type TaskInfo,
  type TaskOptions,
  withTask,
} from "./task";
