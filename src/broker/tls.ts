import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";

export interface TlsMaterial {
  cert: string;
  key: string;
}

/**
 * The configured certificate, or a self-signed development one kept under
 * `<dataDir>/tls`, generated on first start.
 */
export async function loadTls(certFile: string | undefined, keyFile: string | undefined, dataDir: string): Promise<TlsMaterial> {
  if (certFile && keyFile) return { cert: await readFile(certFile, "utf8"), key: await readFile(keyFile, "utf8") };
  const dir = join(dataDir, "tls");
  const certPath = join(dir, "dev-cert.pem");
  const keyPath = join(dir, "dev-key.pem");
  try {
    return { cert: await readFile(certPath, "utf8"), key: await readFile(keyPath, "utf8") };
  } catch {
    // Loaded only to make a certificate: it brings an ASN.1 and X.509 stack a running server does not need.
    const { generate } = await import("selfsigned");
    const pems = await generate([{ name: "commonName", value: "localhost" }], {
      keySize: 2048,
      algorithm: "sha256",
      notAfterDate: new Date(Date.now() + 3 * 365 * 24 * 3600 * 1000),
    });
    await mkdir(dir, { recursive: true });
    await writeFile(keyPath, pems.private, { mode: 0o600 });
    await writeFile(certPath, pems.cert);
    return { cert: pems.cert, key: pems.private };
  }
}
