// A task: BeginTask, its SVID followed through rotations on the Workload API stream,
// a fetch presenting it (for the MCP SDK's StreamableHTTPClientTransport), EndTask.

import { existsSync } from "node:fs";
import { join } from "node:path";
import type { ConnectionOptions, PeerCertificate } from "node:tls";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { Agent, fetch as undiciFetch } from "undici";

import { AgentUnreachable, fromStatus, ServerIdentityMismatch, TesseraError } from "./errors";
import { Svid } from "./svid";
import type { ProtoGrpcType as TasksProto } from "./gen/tasks";
import type { ProtoGrpcType as WorkloadProto } from "./gen/workload";
import type { Task__Output } from "./gen/tessera/v1/Task";
import type { TasksClient } from "./gen/tessera/v1/Tasks";
import type { SpiffeWorkloadAPIClient } from "./gen/SpiffeWorkloadAPI";
import type { X509SVIDResponse__Output } from "./gen/X509SVIDResponse";

export const DEFAULT_SOCKET = "/run/tessera/workload.sock";

/** What to ask for in BeginTask. */
export interface TaskOptions {
  /** The MCP server: its name (`github`) or full SPIFFE ID. */
  server: string;
  /** The human the task acts for. */
  subject: string;
  /** e.g. `github/tool/get_pull_request`; a subset of a live consent. */
  scopes: string[];
  purpose?: string;
  /** Requested lifetime in seconds; 0 = the agent's default. */
  lifetimeSecs?: number;
  /** Default: SPIFFE_ENDPOINT_SOCKET, then /run/tessera/workload.sock (path, unix:PATH or unix:///PATH). */
  socket?: string;
  /** Which client identity, when the process has several. */
  client?: string;
  /**
   * End live tasks on SIGTERM/SIGINT before the process dies (Node's default for both
   * is to exit at once, running no `finally`). Default true.
   */
  handleSignals?: boolean;
  /** Deadline of each agent call, in milliseconds (default 10 000). */
  timeoutMs?: number;
}

/** What the agent recorded for a task. */
export interface TaskInfo {
  id: string;
  spiffeId: string;
  client: string;
  subject: string;
  server: string;
  scopes: string[];
  purpose: string;
  consentId: string;
  begunAt: Date;
  deadline: Date;
  endedAt: Date | null;
  endReason: string;
}

function toInfo(t: Task__Output): TaskInfo {
  const date = (s: string | number) => new Date(Number(s) * 1000);
  return {
    id: t.id,
    spiffeId: t.spiffe_id,
    client: t.client,
    subject: t.subject,
    server: t.server,
    scopes: [...t.scopes],
    purpose: t.purpose,
    consentId: t.consent_id,
    begunAt: date(t.begun_at_unix),
    deadline: date(t.deadline_unix),
    endedAt: Number(t.ended_at_unix) ? date(t.ended_at_unix) : null,
    endReason: t.end_reason,
  };
}

/** The workload socket's path from an option, SPIFFE_ENDPOINT_SOCKET, or the default. */
export function socketPath(socket?: string): string {
  let s = socket ?? process.env.SPIFFE_ENDPOINT_SOCKET ?? DEFAULT_SOCKET;
  for (const prefix of ["unix://", "unix:"]) {
    if (s.startsWith(prefix)) {
      s = s.slice(prefix.length);
      break;
    }
  }
  if (!s.startsWith("/")) throw new Error(`the workload socket must be an absolute unix socket path, got ${JSON.stringify(s)}`);
  return s;
}

/** The SPIFFE ID an MCP server named `server` must present. */
export function serverSpiffeId(trustDomain: string, server: string): string {
  return server.startsWith("spiffe://") ? server : `spiffe://${trustDomain}/mcp/${server}`;
}

const LOAD_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

let loaded: { tasks: TasksProto; workload: WorkloadProto } | undefined;

function protos() {
  // The .proto files copied from the repository's proto/ at build time (scripts/gen.mjs).
  if (!loaded) {
    const dir = join(__dirname, "..", "..", "proto");
    const opts = { ...LOAD_OPTIONS, includeDirs: [dir] };
    loaded = {
      tasks: grpc.loadPackageDefinition(protoLoader.loadSync("tessera/v1/tasks.proto", opts)) as unknown as TasksProto,
      workload: grpc.loadPackageDefinition(protoLoader.loadSync("workload.proto", opts)) as unknown as WorkloadProto,
    };
  }
  return loaded;
}

function header(): grpc.Metadata {
  // Every Workload API call carries it (the spec's guard against SSRF).
  const md = new grpc.Metadata();
  md.set("workload.spiffe.io", "true");
  return md;
}

function typed(e: unknown, scopes: string[] = []): TesseraError {
  const err = e as grpc.ServiceError;
  if (err && typeof err.code === "number") {
    return fromStatus(grpc.status[err.code] ?? "UNKNOWN", err.details || err.message, scopes);
  }
  return e instanceof TesseraError ? e : new TesseraError(String(e));
}

/**
 * Checks the server by SPIFFE ID (Node calls this after the chain verified against
 * the bundle): exactly one URI SAN, equal to `expected`. The server has no DNS name,
 * so there is no hostname to check.
 */
export function spiffeServerCheck(expected: string) {
  return (_host: string, cert: PeerCertificate): Error | undefined => {
    const uris = (cert.subjectaltname ?? "")
      .split(", ")
      .filter((s) => s.startsWith("URI:"))
      .map((s) => s.slice("URI:".length));
    if (uris.length === 1 && uris[0] === expected) return undefined;
    return new ServerIdentityMismatch(expected, uris);
  };
}

type FetchLike = (url: string | URL, init?: RequestInit) => Promise<Response>;

const live = new Set<Task>();

/** One task of this runtime, for one MCP server and one human subject. Begin with `Task.begin` or `withTask`. */
export class Task {
  private _info: TaskInfo;
  private _svid: Svid;
  private _rotations = 0;
  private _ending: Promise<TaskInfo> | undefined;
  private _ended = false;
  private _stream: grpc.ClientReadableStream<X509SVIDResponse__Output> | undefined;
  private _agent: Agent | undefined;
  private _agentGeneration = -1;
  private _retry: NodeJS.Timeout | undefined;
  private _confirming = false;
  private readonly _callbacks: ((svid: Svid) => void)[] = [];
  private readonly _rotationWaiters: (() => void)[] = [];

  private constructor(
    private readonly opts: TaskOptions,
    private readonly tasks: TasksClient,
    private readonly workload: SpiffeWorkloadAPIClient,
    info: TaskInfo,
    svid: Svid,
  ) {
    this._info = info;
    this._svid = svid;
  }

  /**
   * BeginTask. Rejects with ConsentRequired, NotAttested, AgentUnreachable or
   * TaskRefused carrying the agent's message.
   */
  static async begin(opts: TaskOptions): Promise<Task> {
    const path = socketPath(opts.socket);
    if (!existsSync(path)) throw new AgentUnreachable(`no Tessera agent socket at ${path}`);
    const p = protos();
    const target = `unix://${path}`;
    const tasks = new p.tasks.tessera.v1.Tasks(target, grpc.credentials.createInsecure());
    const workload = new p.workload.SpiffeWorkloadAPI(target, grpc.credentials.createInsecure(), {
      // Each live task of this process rides in every FetchX509SVID message.
      "grpc.max_receive_message_length": 16 * 1024 * 1024,
    });
    const deadline = () => ({ deadline: Date.now() + (opts.timeoutMs ?? 10_000) });
    let resp;
    try {
      resp = await new Promise<import("./gen/tessera/v1/BeginTaskResponse").BeginTaskResponse__Output>((resolve, reject) =>
        tasks.BeginTask(
          {
            purpose: opts.purpose ?? "",
            subject: opts.subject,
            server: opts.server,
            scopes: opts.scopes,
            lifetime_secs: opts.lifetimeSecs ?? 0,
            client: opts.client ?? "",
          },
          header(),
          deadline(),
          (err, r) => (err ? reject(err) : resolve(r!)),
        ),
      );
    } catch (e) {
      tasks.close();
      workload.close();
      throw typed(e, opts.scopes);
    }
    const info = toInfo(resp.task!);
    let svid: Svid;
    try {
      const s = resp.svid!;
      svid = new Svid(s.spiffe_id, s.x509_svid, s.x509_svid_key, s.bundle, s.hint);
      if (svid.spiffeId !== info.spiffeId || svid.hint !== info.id) throw new Error("BeginTask answered with another task's SVID");
    } catch (e) {
      // Begun but unusable: end it now rather than leave it to the process's exit.
      await new Promise((r) => tasks.EndTask({ task_id: info.id }, header(), deadline(), r));
      tasks.close();
      workload.close();
      throw e;
    }
    const task = new Task(opts, tasks, workload, info, svid);
    live.add(task);
    if (opts.handleSignals ?? true) signals.acquire();
    task.watch(100);
    return task;
  }

  get info(): TaskInfo {
    return this._info;
  }
  get id(): string {
    return this._info.id;
  }
  get spiffeId(): string {
    return this._info.spiffeId;
  }
  /** The current SVID (the latest rotation). */
  get svid(): Svid {
    return this._svid;
  }
  /** The SPIFFE ID the task's MCP server must present. */
  get serverId(): string {
    return serverSpiffeId(this._svid.trustDomain, this._info.server);
  }
  /** How many new SVIDs arrived after the first. */
  get rotations(): number {
    return this._rotations;
  }
  get ended(): boolean {
    return this._ended;
  }
  /** Why the task ended ("ended", "deadline", "consent_withdrawn", "revoked"…), or "" while it lives. */
  get endReason(): string {
    return this._info.endReason;
  }

  /** Calls `cb(svid)` on every new SVID (after `tlsOptions()` and `fetch` use it). */
  onRotate(cb: (svid: Svid) => void): void {
    this._callbacks.push(cb);
  }

  /** Resolves on the next rotation (or when the task ends). */
  nextRotation(): Promise<void> {
    return new Promise((resolve) => (this._ended ? resolve() : this._rotationWaiters.push(resolve)));
  }

  /**
   * Options for `tls.connect`/`https.request` presenting the current SVID and
   * accepting only the task's server, by SPIFFE ID after the chain verified against
   * the trust domain's bundle. Read them per connection: they change on rotation.
   */
  tlsOptions(): ConnectionOptions {
    return {
      cert: this._svid.chainPem(),
      key: this._svid.keyPem(),
      ca: this._svid.bundlePem(),
      rejectUnauthorized: true,
      minVersion: "TLSv1.2",
      checkServerIdentity: spiffeServerCheck(this.serverId),
    };
  }

  /**
   * A `fetch` presenting the task's SVID, for the MCP SDK:
   * `new StreamableHTTPClientTransport(url, { fetch: task.fetch })`.
   *
   * Each SVID generation has its own connection pool: after a rotation, requests go
   * out on new connections presenting the new SVID (the server checks expiry on every
   * request, so a connection kept alive with the old certificate would be refused
   * once it expires); the previous pool closes once what is in flight on it is done.
   */
  readonly fetch: FetchLike = (url, init) => {
    // Still usable after the task ended: the server is what refuses a dead task's
    // credential (and says why), on an open connection as on a new one.
    return undiciFetch(url, { ...(init as object), dispatcher: this.dispatcher() }) as unknown as Promise<Response>;
  };

  private dispatcher(): Agent {
    if (!this._agent || this._agentGeneration !== this._rotations) {
      const old = this._agent;
      // HTTP/2 when the server offers it: the MCP SDK abandons response streams once it
      // has its answer, which over HTTP/1.1 costs the connection (a TLS handshake per call).
      this._agent = new Agent({ connect: this.tlsOptions() as object, allowH2: true });
      this._agentGeneration = this._rotations;
      old?.close().catch(() => {});
    }
    return this._agent;
  }

  /** EndTask: the SVID is revoked at once. Idempotent. */
  end(): Promise<TaskInfo> {
    this._ending ??= new Promise<TaskInfo>((resolve, reject) => {
      this._ended = true;
      this.tasks.EndTask({ task_id: this.id }, header(), { deadline: Date.now() + (this.opts.timeoutMs ?? 10_000) }, (err, r) => {
        if (!err && r?.task) this._info = toInfo(r.task);
        this.release();
        err ? reject(typed(err)) : resolve(this._info);
      });
    });
    return this._ending;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.end();
  }

  private release(): void {
    this._ended = true;
    live.delete(this);
    if (this.opts.handleSignals ?? true) signals.release();
    if (this._retry) clearTimeout(this._retry);
    this._stream?.cancel();
    this._stream = undefined;
    // The connection pool stays: a session open on it learns from the server that the
    // task ended. Its idle connections close on undici's keep-alive timeout.
    this.tasks.close();
    this.workload.close();
    this._rotationWaiters.splice(0).forEach((w) => w());
  }

  /** Follows the task's SVID (hint = task id) on this process's FetchX509SVID stream. */
  private watch(backoffMs: number): void {
    if (this._ended) return;
    const stream = this.workload.FetchX509SVID({}, header());
    this._stream = stream;
    stream.on("data", (resp: X509SVIDResponse__Output) => {
      backoffMs = 100;
      const mine = resp.svids.find((s) => s.hint === this.id);
      if (!mine) {
        void this.confirmEndedElsewhere();
        return;
      }
      try {
        this.maybeRotate(new Svid(mine.spiffe_id, mine.x509_svid, mine.x509_svid_key, mine.bundle, mine.hint));
      } catch (e) {
        // A malformed message: keep the last good SVID.
        process.emitWarning(`tessera: unusable FetchX509SVID message for task ${this.id}: ${e}`);
      }
    });
    // An error, or the agent closing the stream (a restart): follow it again, with backoff.
    const again = () => {
      if (this._ended || this._stream !== stream) return;
      this._stream = undefined;
      this._retry = setTimeout(() => this.watch(Math.min(backoffMs * 2, 5000)), backoffMs);
    };
    stream.on("error", again);
    stream.on("end", again);
  }

  private maybeRotate(svid: Svid): void {
    if (this._ended || Buffer.concat(this._svid.chainDer).equals(Buffer.concat(svid.chainDer))) return;
    if (svid.spiffeId !== this.spiffeId) throw new Error(`SVID with hint ${this.id} names ${svid.spiffeId}`);
    this._svid = svid;
    this._rotations += 1;
    for (const cb of this._callbacks) {
      try {
        cb(svid);
      } catch (e) {
        process.emitWarning(`tessera: onRotate callback failed: ${e}`);
      }
    }
    this._rotationWaiters.splice(0).forEach((w) => w());
  }

  /**
   * The stream no longer carries the task's SVID. Every message holds the full state,
   * so the agent has dropped it: the task ended (deadline, consent withdrawn, revoked).
   * Ask the agent why; it may not have recorded the end yet (it refuses first, then
   * persists), so ask a few times before settling for "unknown".
   */
  private async confirmEndedElsewhere(): Promise<void> {
    if (this._confirming) return;
    this._confirming = true;
    let t: Task__Output | undefined;
    for (let attempt = 0; attempt < 50 && !t && !this._ended; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 100));
      const tasks = await new Promise<Task__Output[] | undefined>((resolve) =>
        this.tasks.ListTasks({ include_ended: true }, header(), { deadline: Date.now() + 10_000 }, (err, r) =>
          resolve(err ? undefined : r?.tasks),
        ),
      );
      t = tasks?.find((x) => x.id === this.id && Number(x.ended_at_unix));
    }
    if (this._ended) return;
    this._info = t ? toInfo(t) : { ...this._info, endedAt: new Date(), endReason: "unknown" };
    process.emitWarning(`tessera: task ${this.id} ended: ${this._info.endReason}`);
    this._ending = Promise.resolve(this._info);
    this.release();
  }
}

/**
 * Begins a task, runs `fn` with it, and ends it however `fn` finishes (returns,
 * throws); SIGTERM/SIGINT end it too (see `handleSignals`). Should the process die
 * without running any of this, the agent still ends the task when the process exits.
 */
export async function withTask<T>(opts: TaskOptions, fn: (task: Task) => Promise<T>): Promise<T> {
  const task = await Task.begin(opts);
  try {
    return await fn(task);
  } finally {
    try {
      await task.end();
    } catch (e) {
      process.emitWarning(`tessera: EndTask for ${task.id} failed (${e}); the agent ends it when this process exits`);
    }
  }
}

/**
 * While a task is live, SIGTERM and SIGINT end every live task, then the process dies
 * of the signal as it would have (when no other listener decides otherwise).
 */
class SignalGuard {
  private depth = 0;
  private firing = false;
  private readonly handler = (sig: NodeJS.Signals) => {
    if (this.firing) return;
    this.firing = true;
    const ends = [...live].map((t) => t.end().catch(() => undefined));
    void Promise.all(ends).finally(() => {
      for (const s of ["SIGTERM", "SIGINT"] as const) process.removeListener(s, this.handler);
      this.depth = 0;
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  };

  acquire(): void {
    if (this.depth++ === 0) {
      this.firing = false;
      process.on("SIGTERM", this.handler);
      process.on("SIGINT", this.handler);
    }
  }

  release(): void {
    if (this.depth > 0 && --this.depth === 0) {
      process.removeListener("SIGTERM", this.handler);
      process.removeListener("SIGINT", this.handler);
    }
  }
}

const signals = new SignalGuard();
