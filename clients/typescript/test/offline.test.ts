// What needs no agent: the contract with proto/, DER parsing of hostile input, errors.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";

import * as protoLoader from "@grpc/proto-loader";

import { ConsentRequired, fromStatus, NotAttested, socketPath, splitDerCertificates, TaskRefused, TooManyTasks } from "../src/index";

const dir = join(__dirname, "..", "..", "proto");

// Everything the client reads or writes on the wire, as (message, field, number, type).
// proto/ is the contract: the types are generated from it at build time and this fails
// if a field the client relies on moves or changes type.
const USED: [string, string, number, string][] = [
  ["tessera.v1.BeginTaskRequest", "purpose", 1, "TYPE_STRING"],
  ["tessera.v1.BeginTaskRequest", "subject", 2, "TYPE_STRING"],
  ["tessera.v1.BeginTaskRequest", "server", 3, "TYPE_STRING"],
  ["tessera.v1.BeginTaskRequest", "scopes", 4, "repeated TYPE_STRING"],
  ["tessera.v1.BeginTaskRequest", "lifetime_secs", 5, "TYPE_UINT32"],
  ["tessera.v1.BeginTaskRequest", "client", 6, "TYPE_STRING"],
  ["tessera.v1.BeginTaskResponse", "task", 1, "TYPE_MESSAGE"],
  ["tessera.v1.BeginTaskResponse", "svid", 2, "TYPE_MESSAGE"],
  ["tessera.v1.TaskSvid", "spiffe_id", 1, "TYPE_STRING"],
  ["tessera.v1.TaskSvid", "x509_svid", 2, "TYPE_BYTES"],
  ["tessera.v1.TaskSvid", "x509_svid_key", 3, "TYPE_BYTES"],
  ["tessera.v1.TaskSvid", "bundle", 4, "TYPE_BYTES"],
  ["tessera.v1.TaskSvid", "hint", 5, "TYPE_STRING"],
  ["tessera.v1.Task", "id", 1, "TYPE_STRING"],
  ["tessera.v1.Task", "spiffe_id", 2, "TYPE_STRING"],
  ["tessera.v1.Task", "ended_at_unix", 11, "TYPE_INT64"],
  ["tessera.v1.Task", "end_reason", 12, "TYPE_STRING"],
  ["tessera.v1.EndTaskRequest", "task_id", 1, "TYPE_STRING"],
  ["tessera.v1.ListTasksRequest", "include_ended", 1, "TYPE_BOOL"],
  ["X509SVIDResponse", "svids", 1, "repeated TYPE_MESSAGE"],
  ["X509SVID", "spiffe_id", 1, "TYPE_STRING"],
  ["X509SVID", "x509_svid", 2, "TYPE_BYTES"],
  ["X509SVID", "x509_svid_key", 3, "TYPE_BYTES"],
  ["X509SVID", "bundle", 4, "TYPE_BYTES"],
  ["X509SVID", "hint", 5, "TYPE_STRING"],
];

test("the proto still has every field the client uses", () => {
  const defs = {
    ...protoLoader.loadSync("tessera/v1/tasks.proto", { keepCase: true, includeDirs: [dir] }),
    ...protoLoader.loadSync("workload.proto", { keepCase: true, includeDirs: [dir] }),
  };
  for (const [msg, field, number, type] of USED) {
    const d = defs[msg] as any;
    assert.ok(d?.type, `${msg} is gone from proto/`);
    const f = d.type.field.find((x: any) => x.name === field);
    assert.ok(f, `${msg}.${field} is gone from proto/`);
    assert.equal(f.number, number, `${msg}.${field}`);
    assert.equal((f.label === "LABEL_REPEATED" ? "repeated " : "") + f.type, type, `${msg}.${field}`);
  }
  const tasks = defs["tessera.v1.Tasks"] as any;
  for (const m of ["BeginTask", "EndTask", "ListTasks"]) assert.ok(tasks[m], `Tasks.${m}`);
  assert.equal(tasks.BeginTask.path, "/tessera.v1.Tasks/BeginTask");
  const wl = defs["SpiffeWorkloadAPI"] as any;
  assert.equal(wl.FetchX509SVID.path, "/SpiffeWorkloadAPI/FetchX509SVID"); // the spec's wire name
  assert.equal(wl.FetchX509SVID.responseStream, true);
});

function seq(body: Buffer): Buffer {
  const n = body.length;
  if (n < 0x80) return Buffer.concat([Buffer.from([0x30, n]), body]);
  const len = Buffer.from(n.toString(16).padStart(n > 0xff ? 4 : 2, "0"), "hex");
  return Buffer.concat([Buffer.from([0x30, 0x80 | len.length]), len, body]);
}

test("DER chains split", () => {
  const a = seq(Buffer.alloc(10, 1));
  const b = seq(Buffer.alloc(300, 2));
  assert.deepEqual(splitDerCertificates(Buffer.concat([a, b])), [a, b]);
});

test("malformed DER is refused", () => {
  const cases = [
    Buffer.alloc(0),
    Buffer.from([0x31, 0x00]),
    Buffer.from("\x30\x05abc", "latin1"),
    Buffer.from([0x30, 0x85, 1, 0, 0, 0, 0]),
    Buffer.from("\x30\x81\x05abcde", "latin1"),
    Buffer.concat([Buffer.from([0x30, 0x82, 0x00, 0x90]), Buffer.alloc(0x90)]),
    Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
    Buffer.from([0x30]),
    Buffer.concat(Array(65).fill(seq(Buffer.alloc(0)))),
  ];
  for (const c of cases) assert.throws(() => splitDerCertificates(c), Error, c.toString("hex"));
});

test("agent statuses map to typed errors", () => {
  const e = fromStatus("PERMISSION_DENIED", 'no live consent for client "c", subject "s", server "github" covers github/tool/a, github/tool/b');
  assert.ok(e instanceof ConsentRequired);
  assert.deepEqual(e.missing, ["github/tool/a", "github/tool/b"]);
  assert.ok(fromStatus("PERMISSION_DENIED", "no identity issued") instanceof NotAttested);
  assert.ok(fromStatus("RESOURCE_EXHAUSTED", "128 live") instanceof TooManyTasks);
  assert.ok(fromStatus("INVALID_ARGUMENT", "bad scope") instanceof TaskRefused);
});

test("socket addresses", () => {
  const saved = process.env.SPIFFE_ENDPOINT_SOCKET;
  delete process.env.SPIFFE_ENDPOINT_SOCKET;
  try {
    assert.equal(socketPath(), "/run/tessera/workload.sock");
    assert.equal(socketPath("unix:///run/x.sock"), "/run/x.sock");
    assert.equal(socketPath("unix:/run/x.sock"), "/run/x.sock");
    process.env.SPIFFE_ENDPOINT_SOCKET = "unix:///tmp/a.sock";
    assert.equal(socketPath(), "/tmp/a.sock");
    assert.throws(() => socketPath("relative.sock"));
    assert.throws(() => socketPath("tcp://127.0.0.1:1"));
  } finally {
    if (saved === undefined) delete process.env.SPIFFE_ENDPOINT_SOCKET;
    else process.env.SPIFFE_ENDPOINT_SOCKET = saved;
  }
});
