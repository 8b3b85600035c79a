import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { Redis } from "ioredis";
import mqtt from "mqtt";
import { REDIS_URL, uniq } from "./services.js";
import { onTeardown, tempDir } from "./teardown.js";
import { eventually } from "./wait.js";

/** Real servers in processes of their own, for tests and benchmarks; loopback only. */

export const BIN = new URL("../../bin/iothub-ota.js", import.meta.url).pathname;
const MOSQUITTO = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].find((p) => existsSync(p)) ?? "mosquitto";

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

/**
 * What a test's server process runs with: the shared Redis under a prefix of its own, an admin token, free
 * ports (no TLS listener), a data folder of its own, and logging at WARN.
 */
export async function serverEnv(name: string) {
  const token = `test-admin-${randomBytes(16).toString("hex")}`;
  const prefix = `${uniq(name)}:`;
  const mqttPort = await freePort();
  const dataDir = tempDir(name);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    REDIS_URL,
    REDIS_PREFIX: prefix,
    ADMIN_TOKEN: token,
    LOG_LEVEL: "warn",
    PORT: String(await freePort()),
    MQTT_PORT: String(mqttPort),
    MQTTS_PORT: "0",
    DATA_DIR: dataDir,
  };
  return { env, token, prefix, mqttPort, dataDir };
}

/** Stops a child with SIGTERM and resolves with its exit code. */
async function terminate(p: ChildProcess | undefined): Promise<number | null> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return p?.exitCode ?? null;
  const exited = new Promise<number | null>((r) => p.once("exit", (code) => r(code)));
  p.kill("SIGTERM");
  return exited;
}

/**
 * A Mosquitto of our own on a free loopback port, with a config that never
 * drops QoS 1 messages for a slow subscriber; it can be stopped and resumed.
 */
export class OwnMosquitto {
  #process: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    private readonly config: string,
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<OwnMosquitto> {
    const port = await freePort();
    const config = [
      `listener ${port} 127.0.0.1`,
      "allow_anonymous true",
      "persistence false",
      "max_queued_messages 0",
      "max_inflight_messages 0",
      "max_queued_bytes 0",
      "",
    ];
    const broker = new OwnMosquitto(port, config.join("\n"));
    await broker.resume();
    return broker;
  }

  /** Starts it (again, after {@link stop}) on its port; its config file lives only until it answers. */
  async resume(): Promise<void> {
    const configFile = `/tmp/iothub-ota-mosquitto-${this.port}.conf`;
    await writeFile(configFile, this.config);
    try {
      this.#process = spawn(MOSQUITTO, ["-c", configFile], { stdio: "ignore" });
      await eventually(async () => {
        const c = await mqtt.connectAsync(this.url, { reconnectPeriod: 0, connectTimeout: 1000 });
        await c.endAsync(true);
      });
    } finally {
      await rm(configFile, { force: true });
    }
  }

  async stop(): Promise<void> {
    await terminate(this.#process);
    this.#process = undefined;
  }
}

const REDIS_SERVER = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find((p) => existsSync(p)) ?? "redis-server";

/**
 * A Redis of our own on a free loopback port, for tests that stop, restart or
 * stall it without touching the Redis other tests share. Durable, it keeps its
 * data across a stop (an append-only file, synced on every write); otherwise
 * it comes back empty.
 */
export class OwnRedis {
  #process: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    private readonly dir: string | undefined,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(options: { durable?: boolean } = {}): Promise<OwnRedis> {
    const redis = new OwnRedis(await freePort(), options.durable ? tempDir("redis") : undefined);
    if (redis.dir) await mkdir(redis.dir, { recursive: true });
    await redis.resume();
    onTeardown(() => redis.stop());
    return redis;
  }

  /** Starts it again after {@link stop}, on the same port. */
  async resume(): Promise<void> {
    const persistence = this.dir ? ["--dir", this.dir, "--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"];
    this.#process = spawn(REDIS_SERVER, ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", ...persistence], {
      stdio: "ignore",
    });
    await eventually(async () => {
      const c = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      c.on("error", () => undefined); // not up yet: the connect below rejects and we try again
      try {
        await c.connect();
        await c.ping();
      } finally {
        c.disconnect();
      }
    });
  }

  async stop(): Promise<void> {
    await terminate(this.#process);
    this.#process = undefined;
  }
}

/**
 * A Redis Cluster of our own: three masters (no replicas) on free loopback
 * ports, every slot assigned, in processes stopped after the file's tests.
 * Slots are assigned with CLUSTER ADDSLOTSRANGE and the nodes joined with
 * CLUSTER MEET (what `redis-cli --cluster create` does).
 */
export class OwnRedisCluster {
  private constructor(
    readonly ports: number[],
    private readonly processes: ChildProcess[],
  ) {}

  get nodes(): { host: string; port: number }[] {
    return this.ports.map((port) => ({ host: "127.0.0.1", port }));
  }

  static async start(masters = 3): Promise<OwnRedisCluster> {
    const dir = tempDir("redis-cluster");
    await mkdir(dir, { recursive: true });
    const ports: number[] = [];
    const busPorts: number[] = [];
    const processes: ChildProcess[] = [];
    const cluster = new OwnRedisCluster(ports, processes);
    onTeardown(() => cluster.stop());
    for (let i = 0; i < masters; i++) {
      const [port, bus] = [await freePort(), await freePort()];
      ports.push(port);
      busPorts.push(bus);
      processes.push(
        spawn(
          REDIS_SERVER,
          ["--port", String(port), "--cluster-port", String(bus), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
            "--cluster-enabled", "yes", "--cluster-config-file", `nodes-${port}.conf`, "--cluster-node-timeout", "5000"],
          { stdio: "ignore" },
        ),
      );
    }
    const clients = ports.map((port) => new Redis({ port, host: "127.0.0.1", lazyConnect: true, retryStrategy: () => 50 }));
    for (const c of clients) c.on("error", () => undefined); // not up yet: connect() rejects and is tried again
    try {
      await eventually(() => Promise.all(clients.map(async (c) => (c.status === "ready" ? undefined : c.connect()))));
      const per = Math.ceil(16384 / masters);
      await Promise.all(clients.map((c, i) => c.call("CLUSTER", "ADDSLOTSRANGE", String(i * per), String(Math.min(16383, (i + 1) * per - 1)))));
      // The bus ports are not port + 10000 (that may pass 65535): given to MEET.
      for (let i = 1; i < masters; i++) await clients[0]!.call("CLUSTER", "MEET", "127.0.0.1", String(ports[i]), String(busPorts[i]));
      await eventually(async () => {
        for (const c of clients) {
          const info = String(await c.call("CLUSTER", "INFO"));
          if (!info.includes("cluster_state:ok") || !info.includes(`cluster_known_nodes:${masters}`)) throw new Error(info);
        }
      }, 20_000);
    } finally {
      for (const c of clients) c.disconnect();
    }
    return cluster;
  }

  async stop(): Promise<void> {
    await Promise.all(this.processes.map((p) => terminate(p)));
  }
}

/** `iothub-ota serve` in a process of its own, as an operator runs it. */
export class ServerProcess {
  logs = "";

  private constructor(
    readonly process: ChildProcess,
    readonly httpUrl: string,
  ) {
    process.stdout?.on("data", (d) => (this.logs += d));
    process.stderr?.on("data", (d) => (this.logs += d));
  }

  static async start(env: NodeJS.ProcessEnv, nodeArgs: string[] = []): Promise<ServerProcess> {
    const port = env.PORT ?? String(await freePort());
    const child = spawn(process.execPath, [...nodeArgs, BIN, "serve"], {
      env: { ...env, PORT: port, HOST: "127.0.0.1", MQTT_HOST: "127.0.0.1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const server = new ServerProcess(child, `http://127.0.0.1:${port}`);
    // A server that exits fails the start at once, with what it printed.
    const exited = new Promise<never>((_, reject) =>
      child.once("exit", (code) => setImmediate(() => reject(new Error(`server exited with ${code}:\n${server.logs}`)))),
    );
    exited.catch(() => undefined);
    try {
      await Promise.race([
        exited,
        eventually(async () => {
          if (child.exitCode !== null) return;
          const res = await fetch(`${server.httpUrl}/readyz`);
          if (res.status !== 200) throw new Error(`not ready: ${await res.text()}`);
        }, 30_000),
      ]);
      if (child.exitCode !== null) await exited;
    } catch (err) {
      child.kill("SIGKILL");
      throw err;
    }
    return server;
  }

  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number | null> {
    return terminate(this.process);
  }
}
