// The client against a real agent and the example MCP server (tests/tests/clients.rs
// starts them and sets TESSERA_TEST_*; without them every test here is skipped, and
// that Rust test fails on any skip).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { once } from "node:events";
import * as net from "node:net";
import { join } from "node:path";
import * as tls from "node:tls";
import { describe, test } from "node:test";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import {
  AgentUnreachable,
  ConsentRequired,
  ServerIdentityMismatch,
  spiffeServerCheck,
  Task,
  type TaskOptions,
  withTask,
} from "../src/index";
import { env, listTasks, onRevocationFeed, SCOPE, sleep, UNCONSENTED } from "./helpers";

const e = env();
const skip = e ? false : "no agent: run through tests/tests/clients.rs";
const PR = { repo: "acme/api", number: 42 };

function opts(scopes = [SCOPE], extra: Partial<TaskOptions> = {}): TaskOptions {
  return { server: "github", subject: e!.subject, scopes, purpose: "node --test", socket: e!.socket, ...extra };
}

async function mcp(task: Task): Promise<Client> {
  const client = new Client({ name: "tessera-node-test", version: "0.1.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(e!.url), { fetch: task.fetch }));
  return client;
}

type ToolResult = { isError?: boolean; content: { type: string; text?: string }[]; structuredContent?: any };

function text(r: ToolResult): string {
  return r.content.map((c) => c.text ?? "").join("\n");
}

describe("against a real agent", { skip }, () => {
  test("begin, call, and end when the function returns", async () => {
    let id = "";
    await withTask(opts(), async (task) => {
      id = task.id;
      assert.equal(task.spiffeId, `spiffe://${task.svid.trustDomain}/client/${task.info.client}/task/${task.id}`);
      assert.equal(task.serverId, `spiffe://${task.svid.trustDomain}/mcp/github`);
      const client = await mcp(task);
      const tools = (await client.listTools()).tools.map((t) => t.name).sort();
      assert.deepEqual(tools, ["get_pull_request"]); // only what the task asked for
      const ok = (await client.callTool({ name: "get_pull_request", arguments: PR })) as ToolResult;
      assert.ok(!ok.isError, text(ok));
      assert.equal(JSON.parse(text(ok)).number, 42);
      const denied = (await client.callTool({ name: "list_pulls", arguments: { repo: "acme/api" } })) as ToolResult;
      assert.equal(denied.isError, true);
      assert.equal(denied.structuredContent.authorization.reason, "out_of_scope");
      assert.equal((await listTasks(e!.socket)).get(id)!.ended_at_unix, "0");
      await client.close();
    });
    assert.equal((await listTasks(e!.socket)).get(id)!.end_reason, "ended");
    assert.ok(await onRevocationFeed(e!.socket, id), "the ended task is not on the revocation feed");
  });

  test("end when the function throws", async () => {
    let id = "";
    await assert.rejects(
      withTask(opts(), async (task) => {
        id = task.id;
        const client = await mcp(task);
        await client.callTool({ name: "get_pull_request", arguments: PR });
        throw new RangeError("the model gave up");
      }),
      RangeError,
    );
    assert.equal((await listTasks(e!.socket)).get(id)!.end_reason, "ended");
    assert.ok(await onRevocationFeed(e!.socket, id));
  });

  test("consent refusal is a typed error carrying the agent's message", async () => {
    const err = await Task.begin(opts([SCOPE, UNCONSENTED])).then(
      () => assert.fail("BeginTask succeeded without consent"),
      (x) => x,
    );
    assert.ok(err instanceof ConsentRequired, String(err));
    assert.deepEqual(err.missing, [UNCONSENTED]);
    assert.equal(err.code, "PERMISSION_DENIED");
    assert.match(err.agentMessage, /consent/);
    assert.ok(err.message.includes(UNCONSENTED));
  });

  test("an unreachable agent is a typed error", async () => {
    await assert.rejects(Task.begin(opts([SCOPE], { socket: "/nonexistent/tessera.sock" })), AgentUnreachable);
    // A socket file nobody listens on: UNAVAILABLE from gRPC.
    const path = join(require("node:os").tmpdir(), `tessera-dead-${process.pid}.sock`);
    const srv = net.createServer().listen(path);
    await once(srv, "listening");
    srv.close();
    await once(srv, "close");
    require("node:fs").writeFileSync(path, "");
    try {
      await assert.rejects(Task.begin(opts([SCOPE], { socket: path, timeoutMs: 5000 })), AgentUnreachable);
    } finally {
      require("node:fs").rmSync(path, { force: true });
    }
  });

  test("the server is verified by SPIFFE ID, not hostname", async () => {
    await withTask(opts(), async (task) => {
      const { hostname, port } = new URL(e!.url);
      const connect = (check: ReturnType<typeof spiffeServerCheck>) =>
        new Promise<tls.TLSSocket>((resolve, reject) => {
          const s = tls.connect({ host: hostname, port: Number(port), ...task.tlsOptions(), checkServerIdentity: check });
          s.once("secureConnect", () => resolve(s));
          s.once("error", reject);
        });
      const err = await connect(spiffeServerCheck(`spiffe://${task.svid.trustDomain}/mcp/docs`)).then(
        () => assert.fail("connected to the wrong server"),
        (x) => x,
      );
      assert.ok(err instanceof ServerIdentityMismatch, String(err));
      assert.deepEqual(err.presented, [task.serverId]);
      const s = await connect(spiffeServerCheck(task.serverId));
      assert.ok(s.authorized);
      s.destroy();
      // And what the MCP transport gets when the server is not the task's: no request at all.
      const other = await Task.begin(opts()).catch((x) => x);
      assert.ok(other instanceof Task);
      await other.end();
    });
  });

  test("rotation is followed mid-session", async () => {
    assert.ok(e!.svidTtl > 0 && e!.svidTtl <= 30, "the agent must run with a short task_svid_ttl");
    await withTask(opts(), async (task) => {
      const client = await mcp(task);
      const first = (await client.callTool({ name: "get_pull_request", arguments: PR })) as ToolResult;
      assert.ok(!first.isError, text(first));
      const firstLeaf = task.svid.chainDer[0];
      const expiry = new Date(new X509Certificate(firstLeaf).validTo).getTime();
      // Until the first SVID has expired (plus clock slack): the session must go on.
      while (Date.now() < expiry + 1500) await sleep(200);
      assert.ok(task.rotations >= 1, "no rotation arrived on the Workload API stream");
      assert.ok(!task.svid.chainDer[0].equals(firstLeaf));
      const later = (await client.callTool({ name: "get_pull_request", arguments: PR })) as ToolResult;
      assert.ok(!later.isError, text(later));
      await client.close();
    });
  });

  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    test(`${sig} ends the task before the process dies`, async () => {
      const child = spawn(process.execPath, [join(__dirname, "fixtures", "child.js"), e!.socket, e!.subject], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (d) => (stderr += d));
      const [line] = (await once(child.stdout, "data")) as [Buffer];
      const id = line.toString().trim();
      assert.ok(id, stderr);
      assert.equal((await listTasks(e!.socket)).get(id)!.ended_at_unix, "0");
      child.kill(sig);
      const [code, signal] = (await once(child, "exit")) as [number | null, string | null];
      assert.equal(signal, sig, `exit ${code} ${stderr}`);
      // "ended": the client's EndTask, not the agent noticing the process exit.
      assert.equal((await listTasks(e!.socket)).get(id)!.end_reason, "ended", stderr);
      assert.ok(await onRevocationFeed(e!.socket, id));
    });
  }

  test("a task the agent ends on its own is noticed", async () => {
    const task = await Task.begin(opts([SCOPE], { lifetimeSecs: 2 }));
    const deadline = Date.now() + 15_000;
    while (!task.ended && Date.now() < deadline) await sleep(50);
    assert.ok(task.ended, "the deadline never reached the client");
    assert.equal(task.endReason, "deadline");
  });
});
