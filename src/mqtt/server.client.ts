import { randomBytes } from "node:crypto";
import mqtt, { type IPublishPacket, type MqttClient } from "mqtt";
import type { Limits } from "../config/config.js";
import type { Logger } from "../logger.js";
import type { BrokerLink } from "../ota/ports.js";
import { INGEST_FILTERS, sharedFilter } from "../protocol/topics.js";
import { AppError, ErrorCode } from "../errors.js";

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
 * Messages taken from the broker and not yet acknowledged, and their payload
 * bytes: past either, the client stops reading the connection until some are
 * acknowledged (the broker then holds the rest: backpressure, not memory).
 */
const MAX_UNACKNOWLEDGED = 1000;
const MAX_UNACKNOWLEDGED_BYTES = 16 * 1024 * 1024;

/** On stop, how long messages already taken may take to settle before the client disconnects anyway. */
const STOP_SETTLE_MS = 30_000;

/**
 * Passed to mqtt.js' handleMessage callback to go on with the next packet
 * without acknowledging this one (mqtt.js 5, handlers/publish.js: an error
 * skips its PUBACK); the PUBACK is sent here once the message settles.
 */
const ACK_DEFERRED = new Error("acknowledged once handled");

/** One PUBLISH taken from the broker, in the order received. */
interface Delivery {
  /** The connection it came on: an acknowledgement belongs to it alone (packet ids are per connection). */
  stream: MqttClient["stream"];
  /** Absent for QoS 0, which is never acknowledged. */
  messageId: number | undefined;
  bytes: number;
  state: "handling" | "handled" | "refused";
}

/**
 * The server's MQTT client of an external broker (Mosquitto, EMQX), with
 * credentials of its own: subscribes to what devices report and publishes
 * commands to them.
 *
 * A report is acknowledged only once ingest has made it durable. mqtt.js
 * acknowledges a QoS 1 message when its `handleMessage` calls back, and reads
 * the connection's next packet only then, which would handle one message at a
 * time for every device together. So `handleMessage` hands the message to
 * ingest and lets mqtt.js read on at once, unacknowledged; PUBACKs go out
 * here, in the order the messages came (MQTT 3.1.1 §4.6), as they settle. A
 * message ingest could not store is never acknowledged: the connection is
 * dropped, and the broker sends every unacknowledged message again when the
 * client is back (§4.4), which needs a persistent session (MQTT_CLIENT_ID).
 */
export class ServerMqttClient implements BrokerLink {
  #client: MqttClient | undefined;
  readonly #deliveries: Delivery[] = [];
  #handlingBytes = 0;
  /** mqtt.js' callback for the packet after which reading paused. */
  #paused: (() => void) | undefined;
  #stopping = false;
  #settledAll: (() => void) | undefined;

  constructor(
    private readonly options: ServerClientOptions,
    private readonly onMessage: (topic: string, payload: Buffer) => Promise<void>,
    private readonly log: Logger,
  ) {}

  get ready(): boolean {
    return this.#client?.connected ?? false;
  }

  /** Devices' connections and sessions belong to the external broker. */
  disconnect(): void {}

  async forget(): Promise<void> {}

  async start(): Promise<void> {
    const { url, username, password, clientId, shareGroup, rejectUnauthorized, limits } = this.options;
    if (clientId === undefined) {
      this.log.warn("MQTT_CLIENT_ID is not set: reports left unacknowledged while a dependency is down are lost when the client reconnects");
    }
    const client = mqtt.connect(url, {
      clientId: clientId ?? `iothub-ota-${randomBytes(6).toString("hex")}`,
      clean: clientId === undefined,
      username,
      password,
      reconnectPeriod: 1000,
      connectTimeout: limits.mqttConnectTimeoutMs,
      rejectUnauthorized,
    });
    this.#client = client;
    // Before the CONNACK: a resumed session's messages follow it at once.
    client.handleMessage = (packet, callback) => this.#take(client, packet, callback);
    client.on("error", (err) => this.log.warn({ err: err.message }, "mqtt client error"));
    client.on("offline", () => this.log.warn("mqtt client offline"));
    try {
      await new Promise<void>((resolve, reject) => {
        client.once("connect", () => resolve());
        client.once("error", reject);
      });
      const filters = INGEST_FILTERS.map((f) => (shareGroup ? sharedFilter(shareGroup, f) : f));
      const granted = await client.subscribeAsync(filters, { qos: 1 });
      const refused = granted.filter((g) => g.qos === 128);
      if (refused.length > 0) throw new Error(`broker refused subscriptions: ${refused.map((g) => g.topic).join(", ")}`);
      this.log.info({ url: redact(url), filters }, "mqtt client subscribed");
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  #take(client: MqttClient, packet: IPublishPacket, callback: (err?: Error) => void): void {
    if (this.#stopping) return; // never read on, never acknowledged: the broker sends it to the next session
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    const delivery: Delivery = {
      stream: client.stream,
      messageId: packet.qos > 0 ? packet.messageId : undefined,
      bytes: payload.length,
      state: "handling",
    };
    this.#deliveries.push(delivery);
    this.#handlingBytes += delivery.bytes;
    this.onMessage(packet.topic, payload).then(
      () => this.#settle(delivery, "handled"),
      (err: unknown) => {
        // The dispatcher has logged and counted it; here only the connection's fate is decided.
        this.log.debug({ err, topic: packet.topic }, "message not acknowledged");
        this.#settle(delivery, "refused");
      },
    );
    const goOn = () => (delivery.messageId === undefined ? callback() : callback(ACK_DEFERRED));
    if (this.#full()) this.#paused = goOn;
    else goOn();
  }

  #full(): boolean {
    return this.#deliveries.length >= MAX_UNACKNOWLEDGED || this.#handlingBytes >= MAX_UNACKNOWLEDGED_BYTES;
  }

  #settle(delivery: Delivery, state: "handled" | "refused"): void {
    delivery.state = state;
    this.#handlingBytes -= delivery.bytes;
    const client = this.#client;
    if (state === "refused" && client?.stream === delivery.stream && client.connected) {
      this.log.warn("dropping the broker connection so that it sends the unacknowledged messages again");
      delivery.stream.destroy();
    }
    // Acknowledge in order: the oldest first, as far as the oldest still handling.
    while (this.#deliveries[0] !== undefined && this.#deliveries[0].state !== "handling") {
      const done = this.#deliveries.shift() as Delivery;
      // Only on the connection it came on: on another, its packet id may name another message.
      if (done.state !== "handled" || done.messageId === undefined || client?.stream !== done.stream || !client.connected) continue;
      client["_sendPacket"]({ cmd: "puback", messageId: done.messageId }, undefined);
    }
    if (this.#paused && !this.#full()) {
      const resume = this.#paused;
      this.#paused = undefined;
      resume();
    }
    if (this.#deliveries.length === 0) this.#settledAll?.();
  }

  async publishCommand(topic: string, payload: string): Promise<void> {
    const client = this.#client;
    // Fail fast rather than queue: a caller told "unavailable" may retry without a double send.
    if (!client?.connected || this.#stopping) {
      throw new AppError(ErrorCode.BROKER_UNAVAILABLE, "the MQTT broker is not reachable; nothing was sent");
    }
    const ms = this.options.limits.publishTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new AppError(ErrorCode.COMMAND_UNCONFIRMED, `the MQTT broker did not confirm the command within ${ms} ms; it may still arrive`)),
        ms,
      );
    });
    try {
      await Promise.race([client.publishAsync(topic, payload, { qos: 1 }), timeout]);
    } catch (err) {
      if (err instanceof AppError) throw err;
      // Handed to mqtt.js, which may have written it before failing: it may still arrive.
      this.log.warn({ err, topic }, "command publish failed");
      throw new AppError(ErrorCode.COMMAND_UNCONFIRMED, "the MQTT broker did not confirm the command; it may still arrive");
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops reading, lets what was taken settle (and be acknowledged), then disconnects. */
  async stop(): Promise<void> {
    const client = this.#client;
    if (!client) return;
    this.#stopping = true;
    if (this.#deliveries.length > 0) {
      // Bounded: ingest's tries end on their own; what is still unsettled then is sent again to the next session.
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#settledAll = resolve;
        timer = setTimeout(resolve, STOP_SETTLE_MS);
      });
      clearTimeout(timer);
    }
    this.#client = undefined;
    await client.endAsync();
  }
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, "//***@");
}
