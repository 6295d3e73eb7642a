"""Build hook: generates the gRPC stubs for the Tasks and Workload APIs from the
repository's proto/ with grpcio-tools, so the client never drifts from the contract.

The generated modules register their descriptors in a private descriptor pool, not
protobuf's default one: the SPIFFE Workload API proto has no package, so its messages
(X509SVIDRequest, ...) would collide with py-spiffe's copy of the same proto in any
process that imports both ("duplicate symbol" at import).
"""

import os
import pathlib
import re
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
# Source proto (relative to proto/) -> where it is compiled, so that the generated
# modules land in tessera._proto and import each other from there.
PROTOS = {
    "tessera/v1/tasks.proto": "tessera/_proto/tasks.proto",
    "workload.proto": "tessera/_proto/workload.proto",
}


def proto_dir() -> pathlib.Path:
    candidates = []
    if os.environ.get("TESSERA_PROTO_DIR"):
        candidates.append(pathlib.Path(os.environ["TESSERA_PROTO_DIR"]))
    # In the repository (clients/python/../../proto), then inside an sdist.
    candidates += [HERE.parent.parent / "proto", HERE / "proto"]
    for c in candidates:
        if all((c / src).is_file() for src in PROTOS):
            return c
    raise SystemExit(
        "tessera-client: proto/ not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); build from the repository or set TESSERA_PROTO_DIR"
    )


_POOL_LINE = "_descriptor_pool.Default().AddSerializedFile("
_WKT_IMPORT = re.compile(r"^from google\.protobuf import (\w+_pb2) as (\w+)$", re.M)


def private_pool(path: pathlib.Path) -> None:
    """Rewrites one generated *_pb2.py to add its file to a pool of its own (with
    the well-known types it imports), failing loudly if protoc's output changed."""
    text = path.read_text()
    if text.count(_POOL_LINE) != 1:
        raise SystemExit(f"tessera-client: unexpected protoc output in {path.name}")
    deps = "".join(
        f"_POOL.AddSerializedFile({alias}.DESCRIPTOR.serialized_pb)\n"
        for _, alias in _WKT_IMPORT.findall(text)
    )
    marker = "\n_sym_db = _symbol_database.Default()\n"
    if marker not in text:
        raise SystemExit(f"tessera-client: unexpected protoc output in {path.name}")
    text = text.replace(_POOL_LINE, "_POOL.AddSerializedFile(")
    # The pool must exist (with its dependencies) before the file's own line.
    first_add = text.index("DESCRIPTOR = _POOL.AddSerializedFile(")
    text = (
        text[:first_add]
        + "_POOL = _descriptor_pool.DescriptorPool()\n"
        + deps
        + text[first_add:]
    )
    path.write_text(text)


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc

    src = proto_dir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for s, dst in PROTOS.items():
            (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / s, tmp / dst)
        include = str(pathlib.Path(protoc.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{tmp}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *sorted(str(tmp / d) for d in PROTOS.values()),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"tessera-client: grpc_tools.protoc failed on {src}")
    gen = out_dir / "tessera" / "_proto"
    (gen / "__init__.py").write_text('"""Generated at build time from proto/."""\n')
    for pb2 in sorted(gen.glob("*_pb2.py")):
        private_pool(pb2)


class BuildPy(build_py):
    def run(self):
        super().run()
        generate(pathlib.Path(self.build_lib))


class SDist(sdist):
    """An sdist carries the protos it was cut from, so it builds without the repository."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        src = proto_dir()
        for s in PROTOS:
            dst = pathlib.Path(base_dir) / "proto" / s
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / s, dst)


setup(cmdclass={"build_py": BuildPy, "sdist": SDist})
