import { mkdir, readFile, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Worker } from "node:worker_threads";

export interface TlsMaterial {
  cert: string;
  key: string;
}

/**
 * Makes the development certificate in a thread of its own: selfsigned
 * brings an ASN.1 and X.509 stack (@peculiar/x509, asn1js: about 3 MB of
 * heap) that a running server never needs again, and a worker's heap goes
 * with it when it ends.
 */
const GENERATE = `
const { parentPort, workerData } = require("node:worker_threads");
require(workerData.selfsigned)
  .generate([{ name: "commonName", value: "localhost" }], workerData.options)
  .then((pems) => parentPort.postMessage({ cert: pems.cert, key: pems.private }));
`;

function generate(): Promise<TlsMaterial> {
  const selfsigned = createRequire(import.meta.url).resolve("selfsigned");
  const options = { keySize: 2048, algorithm: "sha256", notAfterDate: new Date(Date.now() + 3 * 365 * 24 * 3600 * 1000) };
  return new Promise((resolve, reject) => {
    // execArgv: none of this process' flags (an --input-type=module would make the script above ESM).
    const worker = new Worker(GENERATE, { eval: true, execArgv: [], workerData: { selfsigned, options } });
    let made: TlsMaterial | undefined;
    worker.once("message", (m: TlsMaterial) => (made = m));
    worker.once("error", reject);
    worker.once("exit", (code) => (made ? resolve(made) : reject(new Error(`the development certificate was not made (worker exited ${code})`))));
  });
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
    const pems = await generate();
    await mkdir(dir, { recursive: true });
    await writeFile(keyPath, pems.key, { mode: 0o600 });
    await writeFile(certPath, pems.cert);
    return pems;
  }
}
