"""Agent-side observations for the tests, through the same generated stubs."""

import threading
import time

import grpc

from tessera._proto import tasks_pb2, tasks_pb2_grpc

HEADER = (("workload.spiffe.io", "true"),)


def channel(socket):
    return grpc.insecure_channel(f"unix:{socket}")


def list_tasks(socket):
    with channel(socket) as ch:
        resp = tasks_pb2_grpc.TasksStub(ch).ListTasks(
            tasks_pb2.ListTasksRequest(include_ended=True), metadata=HEADER, timeout=10
        )
        return {t.id: t for t in resp.tasks}


def revoked_ids(socket, want=None, within=5.0):
    """The task ids on the revocation feed; waits up to `within` for `want` to show."""
    seen = set()
    done = threading.Event()
    with channel(socket) as ch:
        stream = tasks_pb2_grpc.RevocationsStub(ch).Watch(
            tasks_pb2.WatchRevocationsRequest(), metadata=HEADER
        )
        timer = threading.Timer(within, stream.cancel)
        timer.start()
        try:
            for msg in stream:
                seen = {r.task_id for r in msg.revoked}
                if want is None or want in seen:
                    done.set()
                    break
        except grpc.RpcError:
            pass
        finally:
            timer.cancel()
            stream.cancel()
    return seen


def wait_for(pred, within=10.0, step=0.05):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
