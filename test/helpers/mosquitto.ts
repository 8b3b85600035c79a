import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { onTeardown } from "./teardown.js";
import { eventually } from "./wait.js";
import mqtt from "mqtt";

const BIN = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].find((p) => existsSync(p)) ?? "mosquitto";

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

/** A Mosquitto of the test's own, on loopback, that the test may stop and start again. */
export class OwnMosquitto {
  #process: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    private readonly configFile: string,
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<OwnMosquitto> {
    const port = await freePort();
    const configFile = `/tmp/iothub-ota-mosquitto-${port}.conf`;
    await writeFile(
      configFile,
      [`listener ${port} 127.0.0.1`, "allow_anonymous true", "persistence false", "max_queued_messages 0", ""].join("\n"),
    );
    const broker = new OwnMosquitto(port, configFile);
    onTeardown(() => broker.stop());
    await broker.resume();
    return broker;
  }

  async resume(): Promise<void> {
    this.#process = spawn(BIN, ["-c", this.configFile], { stdio: "ignore" });
    await eventually(async () => {
      const c = await mqtt.connectAsync(this.url, { reconnectPeriod: 0, connectTimeout: 1000 });
      await c.endAsync(true);
    });
  }

  async stop(): Promise<void> {
    const p = this.#process;
    this.#process = undefined;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill("SIGTERM");
    await exited;
  }
}
