// A task's X.509-SVID as the agent sends it (DER), in the PEM forms Node's TLS takes.

const MAX_CERTS = 64;

/**
 * Splits concatenated DER certificates (the Workload API's form for chains and bundles).
 * Every length is checked against the input: the bytes come from a socket, and a
 * malformed one throws instead of being half-used.
 */
export function splitDerCertificates(data: Uint8Array): Buffer[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const certs: Buffer[] = [];
  let i = 0;
  while (i < buf.length) {
    if (certs.length === MAX_CERTS) throw new Error(`more than ${MAX_CERTS} certificates`);
    if (buf[i] !== 0x30 || i + 2 > buf.length) throw new Error("not a DER certificate (expected a SEQUENCE)");
    const first = buf[i + 1];
    let length: number;
    let header: number;
    if (first < 0x80) {
      length = first;
      header = 2;
    } else {
      const n = first & 0x7f;
      // Long form, at most 4 length bytes, minimally encoded (DER).
      if (n === 0 || n > 4 || i + 2 + n > buf.length || buf[i + 2] === 0) throw new Error("invalid DER length");
      length = buf.readUIntBE(i + 2, n);
      if (length < 0x80) throw new Error("invalid DER length");
      header = 2 + n;
    }
    const end = i + header + length;
    if (end > buf.length) throw new Error("truncated DER certificate");
    certs.push(buf.subarray(i, end));
    i = end;
  }
  if (certs.length === 0) throw new Error("no certificate");
  return certs;
}

function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64");
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** One issued SVID of a task. The key is not enumerable: it stays out of logs and JSON. */
export class Svid {
  readonly chainDer: Buffer[];
  readonly bundleDer: Buffer[];
  declare readonly keyDer: Buffer;

  constructor(
    readonly spiffeId: string,
    x509Svid: Uint8Array,
    key: Uint8Array,
    bundle: Uint8Array,
    readonly hint: string,
  ) {
    if (!spiffeId.startsWith("spiffe://")) throw new Error(`not a SPIFFE ID: ${JSON.stringify(spiffeId)}`);
    if (key.length === 0) throw new Error("no private key");
    this.chainDer = splitDerCertificates(x509Svid);
    this.bundleDer = splitDerCertificates(bundle);
    Object.defineProperty(this, "keyDer", { value: Buffer.from(key), enumerable: false });
  }

  get trustDomain(): string {
    return this.spiffeId.slice("spiffe://".length).split("/", 1)[0];
  }

  /** The certificate chain, leaf first. */
  chainPem(): string {
    return this.chainDer.map((c) => pem("CERTIFICATE", c)).join("");
  }

  keyPem(): string {
    return pem("PRIVATE KEY", this.keyDer);
  }

  /** The trust domain's CA certificates. */
  bundlePem(): string {
    return this.bundleDer.map((c) => pem("CERTIFICATE", c)).join("");
  }

  /** Node's inspect: never the key. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Svid { spiffeId: '${this.spiffeId}', chain: ${this.chainDer.length} certificate(s) }`;
  }
}
