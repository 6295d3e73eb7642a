'use strict';
/*
 * Stock Node gRPC (@grpc/grpc-js over Node's own HTTP/2, nghttp2) against a real
 * tessera-agent, loading the repository's proto files with @grpc/proto-loader
 * as a Node user would. Run by tests/tests/interop_node.rs; each command prints
 * one JSON object on stdout. Private keys are never printed.
 *
 * AUTHORITY '-' keeps grpc-js's default, which on a unix socket is "localhost"
 * (grpc-js 1.14), so that run needed no fix in the agent. Given the socket path
 * instead, grpc-js sends what gRPC C-core and grpc-java send by default, through
 * a third HPACK encoder (nghttp2 indexes headers into its dynamic table): that
 * run is what the agent's authority rewrite must repair.
 *
 *   stock_clients.js x509 SOCKET PROTO_DIR AUTHORITY|-
 *   stock_clients.js tasks SOCKET PROTO_DIR AUTHORITY|- SERVER SUBJECT SCOPE...
 */

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function load(protoDir) {
  const definition = protoLoader.loadSync(['workload.proto', 'tessera/v1/tasks.proto'], {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition);
}

function connect(Service, socket, authority) {
  const options = authority === '-' ? {} : { 'grpc.default_authority': authority };
  return new Service(`unix:${socket}`, grpc.credentials.createInsecure(), options);
}

function workloadHeader() {
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  return md;
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, workloadHeader(), { deadline: Date.now() + 10_000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

/** The first message of the FetchX509SVID stream, which never ends by itself. */
function firstX509(workload) {
  return new Promise((resolve, reject) => {
    const call = workload.FetchX509SVID({}, workloadHeader(), { deadline: Date.now() + 10_000 });
    call.once('data', (response) => {
      resolve(response);
      call.cancel();
    });
    // After a cancel the stream reports CANCELLED; the promise is settled by then.
    call.once('error', reject);
  });
}

async function x509(api, socket, authority) {
  const workload = connect(api.SpiffeWorkloadAPI, socket, authority);
  const response = await firstX509(workload);
  workload.close();
  const first = response.svids[0];
  return {
    svids: response.svids.map((s) => s.spiffe_id),
    hints: response.svids.map((s) => s.hint),
    chain_der_len: first ? first.x509_svid.length : 0,
    has_key: first ? first.x509_svid_key.length > 0 : false,
    bundle_der_len: first ? first.bundle.length : 0,
  };
}

async function tasks(api, socket, authority, server, subject, scopes) {
  const tasksApi = connect(api.tessera.v1.Tasks, socket, authority);
  const workload = connect(api.SpiffeWorkloadAPI, socket, authority);
  const begun = await unary(tasksApi, 'BeginTask', {
    purpose: 'interop: stock grpc-js',
    subject,
    server,
    scopes,
    lifetime_secs: 300,
  });
  const taskId = begun.task.id;
  const listed = await unary(tasksApi, 'ListTasks', {});
  const stream = await firstX509(workload);
  const ended = await unary(tasksApi, 'EndTask', { task_id: taskId });
  tasksApi.close();
  workload.close();
  return {
    task_id: taskId,
    spiffe_id: begun.task.spiffe_id,
    svid_hint: begun.svid.hint,
    svid_der_len: begun.svid.x509_svid.length,
    listed: listed.tasks.map((t) => t.id),
    stream_hints: stream.svids.map((s) => s.hint),
    end_reason: ended.task.end_reason,
  };
}

async function main(argv) {
  const [cmd, socket, protoDir, authority, ...rest] = argv;
  if (!authority) {
    throw new Error('usage: stock_clients.js x509|tasks SOCKET PROTO_DIR AUTHORITY|- ...');
  }
  const api = load(protoDir);
  let result;
  if (cmd === 'x509') {
    result = await x509(api, socket, authority);
  } else if (cmd === 'tasks') {
    const [server, subject, ...scopes] = rest;
    result = await tasks(api, socket, authority, server, subject, scopes);
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
  console.log(JSON.stringify(result));
}

main(process.argv.slice(2)).catch((err) => {
  console.error(err);
  process.exit(1);
});
