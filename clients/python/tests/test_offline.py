"""What needs no agent: the generated code, DER parsing of hostile input, errors."""

import pytest
from google.protobuf import descriptor_pool

import tessera
from tessera import errors
from tessera._proto import tasks_pb2, workload_pb2
from tessera.svid import split_der_certificates


def test_generated_messages_stay_out_of_the_default_pool():
    # py-spiffe registers the same package-less Workload API messages there.
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("X509SVIDRequest")
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("tessera.v1.BeginTaskRequest")


# Everything the client reads or writes on the wire, as (message, field, number, type).
# proto/ is the contract: the stubs are generated from it at build time, and this
# fails the build's tests if a field the client relies on moves or changes type.
USED = [
    (tasks_pb2.BeginTaskRequest, "purpose", 1, "string"),
    (tasks_pb2.BeginTaskRequest, "subject", 2, "string"),
    (tasks_pb2.BeginTaskRequest, "server", 3, "string"),
    (tasks_pb2.BeginTaskRequest, "scopes", 4, "repeated string"),
    (tasks_pb2.BeginTaskRequest, "lifetime_secs", 5, "uint32"),
    (tasks_pb2.BeginTaskRequest, "client", 6, "string"),
    (tasks_pb2.BeginTaskResponse, "task", 1, "Task"),
    (tasks_pb2.BeginTaskResponse, "svid", 2, "TaskSvid"),
    (tasks_pb2.TaskSvid, "spiffe_id", 1, "string"),
    (tasks_pb2.TaskSvid, "x509_svid", 2, "bytes"),
    (tasks_pb2.TaskSvid, "x509_svid_key", 3, "bytes"),
    (tasks_pb2.TaskSvid, "bundle", 4, "bytes"),
    (tasks_pb2.TaskSvid, "hint", 5, "string"),
    (tasks_pb2.Task, "id", 1, "string"),
    (tasks_pb2.Task, "spiffe_id", 2, "string"),
    (tasks_pb2.Task, "ended_at_unix", 11, "int64"),
    (tasks_pb2.Task, "end_reason", 12, "string"),
    (tasks_pb2.EndTaskRequest, "task_id", 1, "string"),
    (tasks_pb2.ListTasksRequest, "include_ended", 1, "bool"),
    (workload_pb2.X509SVIDResponse, "svids", 1, "repeated X509SVID"),
    (workload_pb2.X509SVID, "spiffe_id", 1, "string"),
    (workload_pb2.X509SVID, "x509_svid", 2, "bytes"),
    (workload_pb2.X509SVID, "x509_svid_key", 3, "bytes"),
    (workload_pb2.X509SVID, "bundle", 4, "bytes"),
    (workload_pb2.X509SVID, "hint", 5, "string"),
]

_TYPES = {9: "string", 12: "bytes", 13: "uint32", 3: "int64", 8: "bool"}


@pytest.mark.parametrize("msg,field,number,typ", USED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_the_proto_still_has_what_the_client_uses(msg, field, number, typ):
    f = msg.DESCRIPTOR.fields_by_name.get(field)
    assert f is not None, f"{msg.DESCRIPTOR.full_name}.{field} is gone from proto/"
    assert f.number == number
    repeated = getattr(f, "is_repeated", None)
    repeated = repeated if repeated is not None else f.label == f.LABEL_REPEATED
    kind = f.message_type.name if f.message_type else _TYPES[f.type]
    assert ("repeated " if repeated else "") + kind == typ


def test_the_services_still_have_the_rpcs_the_client_calls():
    from tessera._proto import tasks_pb2_grpc, workload_pb2_grpc

    tasks = tasks_pb2.DESCRIPTOR.services_by_name["Tasks"]
    assert {"BeginTask", "EndTask", "ListTasks"} <= set(tasks.methods_by_name)
    wl = workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    assert wl.full_name == "SpiffeWorkloadAPI"  # the spec's wire name, no package
    assert wl.methods_by_name["FetchX509SVID"].server_streaming
    assert tasks_pb2_grpc.TasksStub and workload_pb2_grpc.SpiffeWorkloadAPIStub


def _seq(body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return b"\x30" + bytes([n]) + body
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(ln)]) + ln + body


def test_der_splitting():
    a, b = _seq(b"x" * 10), _seq(b"y" * 300)
    assert split_der_certificates(a + b) == [a, b]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x31\x00",  # not a SEQUENCE
        b"\x30\x05abc",  # truncated
        b"\x30\x85\x01\x00\x00\x00\x00",  # 5 length bytes
        b"\x30\x81\x05abcde",  # long form for a short length (not DER)
        b"\x30\x82\x00\x90" + b"x" * 0x90,  # leading zero length byte
        b"\x30\x84\xff\xff\xff\xff",  # claims 4 GiB
        b"\x30",  # no length
        _seq(b"") * 65,  # too many
    ],
)
def test_der_splitting_refuses_malformed_input(data):
    with pytest.raises(ValueError):
        split_der_certificates(data)


def test_status_mapping():
    e = errors.from_status(
        "PERMISSION_DENIED",
        'no live consent for client "c", subject "s", server "github" covers github/tool/a, github/tool/b',
    )
    assert isinstance(e, tessera.ConsentRequired) and e.missing == ["github/tool/a", "github/tool/b"]
    assert isinstance(errors.from_status("PERMISSION_DENIED", "no identity issued"), tessera.NotAttested)
    assert isinstance(errors.from_status("UNAVAILABLE", "connection refused"), tessera.AgentUnreachable)
    assert isinstance(errors.from_status("RESOURCE_EXHAUSTED", "128 live"), tessera.TooManyTasks)
    assert isinstance(errors.from_status("INVALID_ARGUMENT", "bad scope"), tessera.TaskRefused)
    for e in (errors.from_status("UNAVAILABLE", "x"), errors.from_status("INTERNAL", "y")):
        assert isinstance(e, tessera.TesseraError)


def test_socket_addresses(monkeypatch):
    from tessera.task import socket_path

    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    assert socket_path(None) == tessera.DEFAULT_SOCKET
    assert socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert socket_path("unix:/run/x.sock") == "/run/x.sock"
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///tmp/a.sock")
    assert socket_path(None) == "/tmp/a.sock"
    with pytest.raises(ValueError):
        socket_path("relative.sock")
    with pytest.raises(ValueError):
        socket_path("tcp://127.0.0.1:1")
