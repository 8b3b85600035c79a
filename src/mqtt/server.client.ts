import { randomBytes } from "node:crypto";
import type { IPublishPacket, MqttClient } from "mqtt";
import type { Limits } from "../config/config.js";
import type { Logger } from "../logger.js";
import type { BrokerLink } from "../ota/ports.js";
import { INGEST_FILTERS, parseDeviceTopic, sharedFilter } from "../protocol/topics.js";
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
 * A message ingest refused is handed to it again after this pause, doubled
 * while nothing settles (a dependency down: ingest's own tries take seconds)
 * up to the last, and back to the first once something does (a device over
 * its bound: its lane drains within milliseconds).
 */
const RETRY_FIRST_MS = 50;
const RETRY_MAX_MS = 2000;

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
  topic: string;
  /** Kept until handled: a refused message is handed to ingest again. */
  payload: Buffer | undefined;
  /** Its device's messages are handed to ingest in the order they came, a refused one's followers after it. */
  device: string;
  /** `waiting`: refused by ingest, or behind a refused message of its device; handed again after a pause. */
  state: "handling" | "handled" | "waiting";
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
 * here, in the order the messages came (MQTT 3.1.1 §4.6), as they settle.
 *
 * A message ingest refused (a dependency down, its device over its bound) is
 * kept, unacknowledged, and handed to ingest again after a pause, with its
 * device's later messages behind it; the connection is kept: dropping it
 * would have the broker send every unacknowledged message of every device
 * again (§4.4), and a device that keeps being refused would cut ingest for
 * all. Memory stays bounded: past MAX_UNACKNOWLEDGED(_BYTES) reading pauses
 * and the broker holds the rest. Only if the connection breaks anyway, the
 * broker sends the unacknowledged messages again to a persistent session
 * (MQTT_CLIENT_ID); the ones taken are still stored from here.
 */
export class ServerMqttClient implements BrokerLink {
  #client: MqttClient | undefined;
  readonly #deliveries: Delivery[] = [];
  /** Payload bytes of the messages not yet handled (handling or waiting). */
  #heldBytes = 0;
  /** Devices with a message waiting: their new messages wait behind it. */
  readonly #waiting = new Set<string>();
  #retryTimer: NodeJS.Timeout | undefined;
  #retryMs = RETRY_FIRST_MS;
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
  async disconnect(): Promise<void> {}

  async forget(): Promise<void> {}

  /** An external broker's queues are not ours to edit: nothing is ever withdrawn. */
  async withdraw(): Promise<string[]> {
    return [];
  }

  async start(): Promise<void> {
    const { url, username, password, clientId, shareGroup, rejectUnauthorized, limits } = this.options;
    if (clientId === undefined) {
      this.log.warn("MQTT_CLIENT_ID is not set: reports left unacknowledged while a dependency is down are lost when the client reconnects");
    }
    // Loaded only with an external broker: the embedded one needs no MQTT client.
    const { default: mqtt } = await import("mqtt");
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
    const parsed = parseDeviceTopic(packet.topic);
    const delivery: Delivery = {
      stream: client.stream,
      messageId: packet.qos > 0 ? packet.messageId : undefined,
      topic: packet.topic,
      payload,
      device: parsed.ok ? `${parsed.value.productName}/${parsed.value.deviceName}` : packet.topic,
      state: "handling",
    };
    this.#deliveries.push(delivery);
    this.#heldBytes += payload.length;
    if (this.#waiting.has(delivery.device)) this.#wait(delivery);
    else this.#hand(delivery);
    const goOn = () => (delivery.messageId === undefined ? callback() : callback(ACK_DEFERRED));
    if (this.#full()) this.#paused = goOn;
    else goOn();
  }

  #hand(delivery: Delivery): void {
    delivery.state = "handling";
    this.onMessage(delivery.topic, delivery.payload as Buffer).then(
      () => this.#handled(delivery),
      (err: unknown) => {
        // The dispatcher has logged and counted it; here it only waits to be handed again.
        this.log.debug({ err, topic: delivery.topic }, "message not stored yet: handed to ingest again after a pause");
        this.#wait(delivery);
        this.#settled();
      },
    );
  }

  #wait(delivery: Delivery): void {
    delivery.state = "waiting";
    this.#waiting.add(delivery.device);
    if (this.#retryTimer === undefined && !this.#stopping) {
      this.#retryTimer = setTimeout(() => this.#retry(), this.#retryMs);
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
    }
  }

  /** Hands every waiting message to ingest again, in the order they came: each device's in its order. */
  #retry(): void {
    this.#retryTimer = undefined;
    if (this.#stopping) return;
    this.#waiting.clear();
    for (const delivery of this.#deliveries) if (delivery.state === "waiting") this.#hand(delivery);
  }

  #handling(): boolean {
    return this.#deliveries.some((d) => d.state === "handling");
  }

  #full(): boolean {
    return this.#deliveries.length >= MAX_UNACKNOWLEDGED || this.#heldBytes >= MAX_UNACKNOWLEDGED_BYTES;
  }

  #handled(delivery: Delivery): void {
    delivery.state = "handled";
    this.#heldBytes -= delivery.payload?.length ?? 0;
    delivery.payload = undefined;
    this.#retryMs = RETRY_FIRST_MS;
    this.#settled();
  }

  /** Acknowledges what can be, resumes reading when there is room again. */
  #settled(): void {
    const client = this.#client;
    // Acknowledge in order: the oldest first, as far as the oldest not handled.
    while (this.#deliveries[0]?.state === "handled") {
      const done = this.#deliveries.shift() as Delivery;
      // Only on the connection it came on: on another, its packet id may name another message.
      if (done.messageId === undefined || client?.stream !== done.stream || !client.connected) continue;
      client["_sendPacket"]({ cmd: "puback", messageId: done.messageId }, undefined);
    }
    if (this.#paused && !this.#full()) {
      const resume = this.#paused;
      this.#paused = undefined;
      resume();
    }
    if (!this.#handling()) this.#settledAll?.();
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

  /** Stops reading, lets what is being handled settle (and be acknowledged), then disconnects; the broker sends the rest again. */
  async stop(): Promise<void> {
    const client = this.#client;
    if (!client) return;
    this.#stopping = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    if (this.#handling()) {
      // Bounded: ingest's tries end on their own; what is still unsettled then is sent again to the next session.
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#settledAll = resolve;
        timer = setTimeout(resolve, STOP_SETTLE_MS);
      });
      clearTimeout(timer);
    }
    this.#client = undefined;
    // Reading may be paused with messages still waiting: a graceful end would wait on it for good. Whatever is
    // unacknowledged, the broker sends again to the next session.
    this.#paused = undefined;
    await client.endAsync(true);
  }
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, "//***@");
}
