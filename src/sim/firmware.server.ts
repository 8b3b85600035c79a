import { createHash, randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { listen } from "../listen.js";

export interface FirmwareFile {
  url: string;
  size: number;
  md5: string;
}

/**
 * Serves one generated firmware file for demos and benchmarks, streamed in
 * chunks so many devices can download at once without copies.
 */
export class FirmwareServer {
  #server: Server | undefined;
  readonly #body: Buffer;
  readonly md5: string;

  constructor(
    readonly size: number,
    private readonly host = "127.0.0.1",
    private readonly port = 0,
  ) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new Error("firmware size must be a positive integer");
    this.#body = randomBytes(size);
    this.md5 = createHash("md5").update(this.#body).digest("hex");
  }

  get file(): FirmwareFile {
    const { port } = this.#server?.address() as AddressInfo;
    return { url: `http://${this.host}:${port}/firmware-${this.md5.slice(0, 8)}.bin`, size: this.size, md5: this.md5 };
  }

  async start(): Promise<void> {
    const body = this.#body;
    const server = createServer((req, res) => {
      if (req.method !== "GET" || !req.url?.startsWith("/firmware-")) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length });
      res.end(body);
    });
    this.#server = await listen(server, this.host, this.port, "--port", (err) => process.stderr.write(`firmware server: ${err.message}\n`));
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}
