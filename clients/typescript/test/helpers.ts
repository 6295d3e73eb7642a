// Agent-side observations for the tests, through plain grpc-js on the copied protos.
import { join } from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export const SCOPE = "github/tool/get_pull_request";
export const UNCONSENTED = "github/tool/search_code";

/** Where the agent and the example server are (set by tests/tests/clients.rs). */
export function env() {
  const socket = process.env.TESSERA_TEST_SOCKET;
  if (!socket) return undefined;
  return {
    socket,
    url: process.env.TESSERA_TEST_MCP_URL!,
    subject: process.env.TESSERA_TEST_SUBJECT!,
    svidTtl: Number(process.env.TESSERA_TEST_SVID_TTL ?? "0"),
  };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function tasksService(): any {
  const def = protoLoader.loadSync("tessera/v1/tasks.proto", {
    keepCase: true,
    longs: String,
    defaults: true,
    includeDirs: [join(__dirname, "..", "..", "proto")],
  });
  return (grpc.loadPackageDefinition(def) as any).tessera.v1;
}

function md() {
  const m = new grpc.Metadata();
  m.set("workload.spiffe.io", "true");
  return m;
}

export interface ListedTask {
  id: string;
  end_reason: string;
  ended_at_unix: string;
}

export function listTasks(socket: string): Promise<Map<string, ListedTask>> {
  const v1 = tasksService();
  const client = new v1.Tasks(`unix://${socket}`, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) =>
    client.ListTasks({ include_ended: true }, md(), (err: Error | null, r: { tasks: ListedTask[] }) => {
      client.close();
      if (err) reject(err);
      else resolve(new Map(r.tasks.map((t) => [t.id, t])));
    }),
  );
}

/** Whether `taskId` shows on the revocation feed within `withinMs`. */
export function onRevocationFeed(socket: string, taskId: string, withinMs = 5000): Promise<boolean> {
  const v1 = tasksService();
  const client = new v1.Revocations(`unix://${socket}`, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    const stream = client.Watch({}, md());
    const done = (v: boolean) => {
      clearTimeout(timer);
      stream.cancel();
      client.close();
      resolve(v);
    };
    const timer = setTimeout(() => done(false), withinMs);
    stream.on("data", (set: { revoked: { task_id: string }[] }) => {
      if (set.revoked.some((r) => r.task_id === taskId)) done(true);
    });
    stream.on("error", () => undefined);
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
