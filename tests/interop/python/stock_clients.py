"""Stock Python SPIFFE and gRPC clients against a real tessera-agent.

Run by tests/tests/interop.rs, never by hand in CI; each subcommand prints one
JSON object on stdout that the Rust test asserts on. Nothing here is Tessera's
code: py-spiffe and grpcio are used exactly as a user would, default channel
options included (gRPC C-core sends the socket path as :authority).

    stock_clients.py x509-context SOCKET
    stock_clients.py x509-source SOCKET
    stock_clients.py jwt SOCKET AUDIENCE FOREIGN_SPIFFE_ID
    stock_clients.py tasks SOCKET PROTO_DIR SERVER SUBJECT SCOPE...
    stock_clients.py admin ADMIN_SOCKET PROTO_DIR
    stock_clients.py rpc-latency SOCKET PROTO_DIR CALLS AUTHORITY|-
"""

import importlib
import json
import os
import sys
import tempfile
import threading
import time

WORKLOAD_HEADER = (("workload.spiffe.io", "true"),)


def out(obj):
    print(json.dumps(obj), flush=True)


def stubs(proto_dir, name):
    """Generates Python stubs for proto/tessera/v1/*.proto with grpcio-tools and
    imports NAME's: the repository's proto is the contract, compiled as a Python
    user would."""
    from grpc_tools import protoc

    gen = tempfile.mkdtemp(prefix="tessera-py-stubs-")
    v1 = os.path.join(proto_dir, "tessera", "v1")
    protos = sorted(os.path.join(v1, f) for f in os.listdir(v1) if f.endswith(".proto"))
    args = ["protoc", f"-I{proto_dir}", f"--python_out={gen}", f"--grpc_python_out={gen}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on proto/tessera/v1")
    sys.path.insert(0, gen)
    pb2 = importlib.import_module(f"tessera.v1.{name}_pb2")
    grpc_pb2 = importlib.import_module(f"tessera.v1.{name}_pb2_grpc")
    return pb2, grpc_pb2


def x509_context(socket):
    from spiffe import WorkloadApiClient

    with WorkloadApiClient(socket_path=f"unix://{socket}") as client:
        ctx = client.fetch_x509_context(timeout=10)
        out(
            {
                "default_svid": str(ctx.default_svid.spiffe_id),
                "svids": [str(s.spiffe_id) for s in ctx.x509_svids],
                "chain_len": len(ctx.default_svid.cert_chain),
                "bundles": sorted(str(b.trust_domain) for b in ctx.x509_bundle_set.bundles),
            }
        )


def x509_source(socket):
    from spiffe import X509Source

    with X509Source(socket_path=f"unix://{socket}", timeout_in_seconds=10) as source:
        svid = source.svid
        bundle = source.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        out(
            {
                "svid": str(svid.spiffe_id),
                "bundle_authorities": len(bundle.x509_authorities) if bundle else 0,
            }
        )


def jwt(socket, audience, foreign):
    """py-spiffe's JWT API as a user calls it: a JWT-SVID from the client, validated
    locally against the fetched JWT bundle and by the agent; the same through
    JwtSource; and a JWT-SVID asked for an identity (FOREIGN_SPIFFE_ID) that is not
    this process's."""
    from spiffe import JwtSource, JwtSvid, SpiffeId, WorkloadApiClient

    def error_of(call):
        try:
            call()
        except Exception as e:  # what a user would see, by type and message
            return f"{type(e).__name__}: {e}"
        return None

    with WorkloadApiClient(socket_path=f"unix://{socket}") as client:
        svid = client.fetch_jwt_svid(audience={audience}, timeout=10)
        bundles = client.fetch_jwt_bundles(timeout=10)
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
        wrong_audience = error_of(
            lambda: JwtSvid.parse_and_validate(svid.token, bundle, {"https://other.example"})
        )
        remote = client.validate_jwt_svid(svid.token, audience, timeout=10)
        remote_wrong_audience = error_of(
            lambda: client.validate_jwt_svid(svid.token, "https://other.example", timeout=10)
        )
        foreign_error = error_of(
            lambda: client.fetch_jwt_svid(audience={audience}, subject=SpiffeId(foreign), timeout=10)
        )
    with JwtSource(socket_path=f"unix://{socket}", timeout_in_seconds=10) as source:
        from_source = source.fetch_svid(audience={audience})
        source_bundle = source.get_bundle_for_trust_domain(from_source.spiffe_id.trust_domain)
        source_valid = JwtSvid.parse_and_validate(from_source.token, source_bundle, {audience})
    out(
        {
            "spiffe_id": str(svid.spiffe_id),
            "audience": sorted(svid.audience),
            "expiry": svid.expiry,
            "local_spiffe_id": str(local.spiffe_id),
            "wrong_audience": wrong_audience,
            "remote_spiffe_id": str(remote.spiffe_id),
            "remote_wrong_audience": remote_wrong_audience,
            "foreign_error": foreign_error,
            "source_spiffe_id": str(source_valid.spiffe_id),
            "source_bundle_keys": len(source_bundle.jwt_authorities) if source_bundle else 0,
        }
    )


def tasks(socket, proto_dir, server, subject, scopes):
    import grpc

    pb2, rpc = stubs(proto_dir, "tasks")
    channel = grpc.insecure_channel(f"unix:{socket}")
    tasks_api = rpc.TasksStub(channel)
    begun = tasks_api.BeginTask(
        pb2.BeginTaskRequest(
            purpose="interop: stock grpcio",
            subject=subject,
            server=server,
            scopes=scopes,
            lifetime_secs=300,
        ),
        metadata=WORKLOAD_HEADER,
        timeout=10,
    )
    task_id = begun.task.id
    listed = tasks_api.ListTasks(pb2.ListTasksRequest(), metadata=WORKLOAD_HEADER, timeout=10)

    # Watch revocations on a second channel, as a verifier would, then end the task.
    seen = threading.Event()
    watch_error = []
    watch_channel = grpc.insecure_channel(f"unix:{socket}")
    watch = rpc.RevocationsStub(watch_channel).Watch(
        pb2.WatchRevocationsRequest(), metadata=WORKLOAD_HEADER
    )
    first_set = threading.Event()

    def follow():
        try:
            for revocation_set in watch:
                first_set.set()
                if any(r.task_id == task_id for r in revocation_set.revoked):
                    seen.set()
                    return
        except grpc.RpcError as e:  # cancelled at the end, or a real failure
            if not seen.is_set():
                watch_error.append(f"{e.code()}: {e.details()}")
            first_set.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    if not first_set.wait(10):
        raise SystemExit("Revocations.Watch sent no first set within 10 s")
    started = time.monotonic()
    ended = tasks_api.EndTask(pb2.EndTaskRequest(task_id=task_id), metadata=WORKLOAD_HEADER, timeout=10)
    on_feed = seen.wait(10)
    feed_ms = (time.monotonic() - started) * 1000
    watch.cancel()
    out(
        {
            "task_id": task_id,
            "spiffe_id": begun.task.spiffe_id,
            "svid_hint": begun.svid.hint,
            "svid_der_len": len(begun.svid.x509_svid),
            "listed": [t.id for t in listed.tasks],
            "end_reason": ended.task.end_reason,
            "on_feed": on_feed,
            "end_to_feed_ms": round(feed_ms, 2),
            "watch_error": watch_error,
        }
    )


def admin(admin_socket, proto_dir):
    import grpc

    pb2, rpc = stubs(proto_dir, "admin")
    channel = grpc.insecure_channel(f"unix:{admin_socket}")
    status = rpc.AdminStub(channel).GetStatus(pb2.GetStatusRequest(), timeout=10)
    out({"trust_domain": status.trust_domain})


def rpc_latency(socket, proto_dir, calls, authority):
    """ListTasks round trips on one channel; AUTHORITY '-' keeps grpcio's default."""
    import grpc

    pb2, rpc = stubs(proto_dir, "tasks")
    options = [] if authority == "-" else [("grpc.default_authority", authority)]
    channel = grpc.insecure_channel(f"unix:{socket}", options=options)
    stub = rpc.TasksStub(channel)
    request = pb2.ListTasksRequest()
    for _ in range(50):
        stub.ListTasks(request, metadata=WORKLOAD_HEADER, timeout=10)
    samples = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        stub.ListTasks(request, metadata=WORKLOAD_HEADER, timeout=10)
        samples.append(time.perf_counter_ns() - t)
    out({"samples_ns": samples})


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    cmd, socket = argv[1], argv[2]
    if cmd == "x509-context":
        x509_context(socket)
    elif cmd == "x509-source":
        x509_source(socket)
    elif cmd == "jwt":
        jwt(socket, argv[3], argv[4])
    elif cmd == "tasks":
        tasks(socket, argv[3], argv[4], argv[5], argv[6:])
    elif cmd == "admin":
        admin(socket, argv[3])
    elif cmd == "rpc-latency":
        rpc_latency(socket, argv[3], int(argv[4]), argv[5])
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
