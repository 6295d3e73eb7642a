"""Typed errors. Each carries the agent's own message (``agent_message``) and, where
there is one, the gRPC status code (``code``), so a runtime can branch on the type
and still show the operator exactly what the agent said."""

from __future__ import annotations

import re
import ssl

__all__ = [
    "TesseraError",
    "AgentUnreachable",
    "NotAttested",
    "ConsentRequired",
    "TaskRefused",
    "TooManyTasks",
    "TaskEnded",
    "ServerIdentityMismatch",
]


class TesseraError(Exception):
    """Base of every error this package raises."""

    def __init__(self, message: str, *, agent_message: str = "", code: str = ""):
        super().__init__(message)
        self.agent_message = agent_message
        self.code = code


class AgentUnreachable(TesseraError):
    """The agent's workload socket could not be reached (missing, refused, or the
    agent shutting down)."""


class NotAttested(TesseraError):
    """The agent does not recognise this process: no registration entry matches it
    (uid, executable path, SHA-256...). Register it with ``tessera entry create``."""


class ConsentRequired(TesseraError):
    """No live consent covers what the task asked for. ``missing`` lists the scopes
    the agent named as uncovered (empty when no consent exists at all for this
    client, subject and server); grant one with ``tessera consent grant``."""

    def __init__(self, message: str, *, missing: list[str], agent_message: str, code: str):
        super().__init__(message, agent_message=agent_message, code=code)
        self.missing = missing


class TaskRefused(TesseraError):
    """BeginTask or EndTask refused for another reason (an invalid argument, an
    unknown task), with the agent's message."""


class TooManyTasks(TaskRefused):
    """This process already holds as many live tasks as the agent allows; end one."""


class TaskEnded(TesseraError):
    """The task ended before its holder ended it: deadline, consent withdrawn, or
    revoked by an administrator. Its SVID is no longer usable."""


class ServerIdentityMismatch(ssl.SSLCertVerificationError, TesseraError):
    """The server's certificate chains to the trust domain's bundle but does not
    name the SPIFFE ID the task is for: the connection is abandoned before any
    request is sent."""

    def __init__(self, message: str, *, expected: str, presented: list[str]):
        ssl.SSLCertVerificationError.__init__(self, message)
        self.agent_message = ""
        self.code = ""
        self.expected = expected
        self.presented = presented

    def __str__(self) -> str:
        return self.args[0]


# The agent's refusals, as worded by crates/tessera-agent (tasks/consent.rs and
# workload.rs). The status code decides the type; the wording only adds detail, so a
# reworded message still raises the right type, just without `missing`.
_COVERS = re.compile(r"\bcovers (.+)$")


def from_status(code: str, message: str, *, scopes: list[str] | None = None) -> TesseraError:
    """Maps a gRPC status (code name, message) from the agent to a typed error."""
    if code == "UNAVAILABLE":
        return AgentUnreachable(
            f"the Tessera agent is unreachable: {message}", agent_message=message, code=code
        )
    if code == "PERMISSION_DENIED":
        if "consent" in message:
            m = _COVERS.search(message)
            missing = [s.strip() for s in m.group(1).split(",") if s.strip()] if m else []
            what = ", ".join(missing) if missing else ", ".join(scopes or []) or "this task"
            return ConsentRequired(
                f"no consent covers {what}: {message}",
                missing=missing,
                agent_message=message,
                code=code,
            )
        return NotAttested(
            f"the agent did not attest this process: {message}", agent_message=message, code=code
        )
    if code == "RESOURCE_EXHAUSTED":
        return TooManyTasks(message, agent_message=message, code=code)
    if code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"):
        return TaskRefused(message, agent_message=message, code=code)
    return TesseraError(f"agent error {code}: {message}", agent_message=message, code=code)
