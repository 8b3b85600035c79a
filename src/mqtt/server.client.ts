import { randomBytes } from "node:crypto";
import mqtt, { type MqttClient } from "mqtt";
import type { Limits } from "../config/config.js";
import type { Logger } from "../logger.js";
import type { BrokerLink } from "../ota/ports.js";
import { INGEST_FILTERS, sharedFilter } from "../protocol/topics.js";
import { AppError, ErrorCode } from "../errors.js";

const ACK_TIMEOUT_MS = 10_000;

export interface ServerClientOptions {
  url: string;
  username?: string;
  password?: string;
  /** A fixed id keeps a persistent session (clean: false) across restarts; none means a fresh one. */
  clientId?: string;
  /** Subscribe as `$share/<group>/...` so several instances split the ingest. */
  shareGroup?: string;
  /** Check the broker's TLS certificate (mqtts://, wss://); off only for development. */
  rejectUnauthorized: boolean;
  limits: Limits;
}

/**
 * The server's MQTT client of an external broker (Mosquitto, EMQX), with
 * credentials of its own: subscribes to what devices report and publishes
 * commands to them.
 */
export class ServerMqttClient implements BrokerLink {
  #client: MqttClient | undefined;

  constructor(
    private readonly options: ServerClientOptions,
    private readonly onMessage: (topic: string, payload: Buffer) => void,
    private readonly log: Logger,
  ) {}

  get ready(): boolean {
    return this.#client?.connected ?? false;
  }

  /** Devices' connections and sessions belong to the external broker. */
  disconnect(): void {}

  async forget(): Promise<void> {}

  async start(): Promise<void> {
    const { url, username, password, clientId, shareGroup, rejectUnauthorized } = this.options;
    const client = await mqtt.connectAsync(url, {
      clientId: clientId ?? `iothub-ota-${randomBytes(6).toString("hex")}`,
      clean: clientId === undefined,
      username,
      password,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      rejectUnauthorized,
    });
    this.#client = client;
    client.on("message", (topic, payload) => this.onMessage(topic, payload));
    client.on("error", (err) => this.log.warn({ err: err.message }, "mqtt client error"));
    client.on("offline", () => this.log.warn("mqtt client offline"));
    const filters = INGEST_FILTERS.map((f) => (shareGroup ? sharedFilter(shareGroup, f) : f));
    try {
      const granted = await client.subscribeAsync(filters, { qos: 1 });
      const refused = granted.filter((g) => g.qos === 128);
      if (refused.length > 0) throw new Error(`broker refused subscriptions: ${refused.map((g) => g.topic).join(", ")}`);
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.log.info({ url: redact(url), filters }, "mqtt client subscribed");
  }

  async publishCommand(topic: string, payload: string): Promise<void> {
    const client = this.#client;
    // Fail fast rather than queue: a caller told "unavailable" may retry without a double send.
    if (!client?.connected) throw new AppError(ErrorCode.BROKER_UNAVAILABLE, "the MQTT broker is not reachable; nothing was sent");
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new AppError(ErrorCode.BROKER_UNAVAILABLE, `the MQTT broker did not acknowledge within ${ACK_TIMEOUT_MS} ms; the command may still arrive`)),
        ACK_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([client.publishAsync(topic, payload, { qos: 1 }), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async stop(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    if (client) await client.endAsync();
  }
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, "//***@");
}
