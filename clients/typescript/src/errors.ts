// Typed errors. Each carries the agent's own message (`agentMessage`) and the gRPC
// status code name (`code`), so a runtime can branch on the type and still show the
// operator exactly what the agent said.

/** Base of every error this package throws. */
export class TesseraError extends Error {
  constructor(
    message: string,
    readonly agentMessage = "",
    readonly code = "",
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** The agent's workload socket could not be reached (missing, refused, shutting down). */
export class AgentUnreachable extends TesseraError {}

/** No registration entry matches this process: register it with `tessera entry create`. */
export class NotAttested extends TesseraError {}

/**
 * No live consent covers what the task asked for. `missing` lists the scopes the agent
 * named as uncovered (empty when no consent exists at all for this client, subject and
 * server); grant one with `tessera consent grant`.
 */
export class ConsentRequired extends TesseraError {
  constructor(
    message: string,
    readonly missing: string[],
    agentMessage: string,
    code: string,
  ) {
    super(message, agentMessage, code);
  }
}

/** BeginTask or EndTask refused for another reason (invalid argument, unknown task). */
export class TaskRefused extends TesseraError {}

/** This process already holds as many live tasks as the agent allows. */
export class TooManyTasks extends TaskRefused {}

/**
 * The server's certificate chains to the trust domain's bundle but does not name the
 * SPIFFE ID the task is for: the connection is dropped before any request is sent.
 */
export class ServerIdentityMismatch extends TesseraError {
  constructor(
    readonly expected: string,
    readonly presented: string[],
  ) {
    super(`server presented ${presented.length ? presented.join(", ") : "no URI SAN"}, expected exactly ${expected}`);
  }
}

// The agent's refusals as worded by crates/tessera-agent (tasks/consent.rs,
// workload.rs). The status code decides the type; the wording only adds detail.
const COVERS = /\bcovers (.+)$/;

/** Maps a gRPC status (code name, details) from the agent to a typed error. */
export function fromStatus(code: string, message: string, scopes: string[] = []): TesseraError {
  switch (code) {
    case "UNAVAILABLE":
      return new AgentUnreachable(`the Tessera agent is unreachable: ${message}`, message, code);
    case "PERMISSION_DENIED": {
      if (message.includes("consent")) {
        const m = COVERS.exec(message);
        const missing = m ? m[1].split(",").map((s) => s.trim()).filter(Boolean) : [];
        const what = (missing.length ? missing : scopes).join(", ") || "this task";
        return new ConsentRequired(`no consent covers ${what}: ${message}`, missing, message, code);
      }
      return new NotAttested(`the agent did not attest this process: ${message}`, message, code);
    }
    case "RESOURCE_EXHAUSTED":
      return new TooManyTasks(message, message, code);
    case "INVALID_ARGUMENT":
    case "NOT_FOUND":
    case "FAILED_PRECONDITION":
      return new TaskRefused(message, message, code);
    default:
      return new TesseraError(`agent error ${code}: ${message}`, message, code);
  }
}
