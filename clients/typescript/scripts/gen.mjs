// Build step: the repository's proto/ is the contract. Copies the two protos the
// client speaks (the SPIFFE Workload API and tessera.v1's Tasks API) into proto/
// (shipped in the package, loaded at run time by @grpc/proto-loader) and generates
// their TypeScript types into src/gen/ with proto-loader-gen-types. Nothing generated
// is committed; a proto change that breaks the client fails `tsc`.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const source = resolve(process.env.TESSERA_PROTO_DIR ?? join(here, "..", "..", "proto"));
const protos = ["workload.proto", "tessera/v1/tasks.proto"];

const out = join(here, "proto");
const haveSource = protos.every((p) => existsSync(join(source, p)));
if (haveSource) {
  rmSync(out, { recursive: true, force: true });
  for (const p of protos) {
    mkdirSync(dirname(join(out, p)), { recursive: true });
    copyFileSync(join(source, p), join(out, p));
  }
} else if (!protos.every((p) => existsSync(join(out, p)))) {
  // An installed package already carries proto/; a checkout needs the repository's.
  console.error(`@tessera/client: proto/ not found at ${source}; build from the repository or set TESSERA_PROTO_DIR`);
  process.exit(1);
}

const gen = join(here, "src", "gen");
rmSync(gen, { recursive: true, force: true });
const bin = join(here, "node_modules", ".bin", "proto-loader-gen-types");
execFileSync(
  bin,
  ["--keepCase", "--longs=String", "--enums=String", "--defaults", "--oneofs", "--grpcLib=@grpc/grpc-js",
   `--includeDirs=${out}`, `--outDir=${gen}`, ...protos],
  { stdio: "inherit" },
);
