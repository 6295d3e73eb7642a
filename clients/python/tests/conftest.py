"""Fixtures for the client's tests. The tests that need a real agent and the example
MCP server read where they are from the environment, set by the cross-process test
that starts them (tests/tests/clients.rs in the repository):

- TESSERA_TEST_SOCKET: the agent's workload socket (this interpreter registered as a client);
- TESSERA_TEST_MCP_URL: the example MCP server ("github");
- TESSERA_TEST_SUBJECT: a subject with a consent for github/tool/get_pull_request,
  list_pulls and delete_branch (not search_code);
- TESSERA_TEST_SVID_TTL: the agent's task_svid_ttl in seconds (short, for rotation).

Without them those tests are skipped, saying why; the Rust test fails on any skip.
"""

import os

import pytest

SCOPE = "github/tool/get_pull_request"
UNCONSENTED = "github/tool/search_code"


class Env:
    def __init__(self):
        self.socket = os.environ["TESSERA_TEST_SOCKET"]
        self.url = os.environ["TESSERA_TEST_MCP_URL"]
        self.subject = os.environ["TESSERA_TEST_SUBJECT"]
        self.svid_ttl = float(os.environ.get("TESSERA_TEST_SVID_TTL", "0"))

    def task(self, scopes=(SCOPE,), **kw):
        import tessera

        return tessera.Task(
            server="github", subject=self.subject, scopes=list(scopes), purpose="pytest", socket=self.socket, **kw
        )


@pytest.fixture
def env():
    if "TESSERA_TEST_SOCKET" not in os.environ:
        pytest.skip("no agent: set TESSERA_TEST_SOCKET etc. (run through tests/tests/clients.rs)")
    return Env()
