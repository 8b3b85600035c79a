import { ObjectId } from "bson";
import mqtt, { type IClientOptions, type MqttClient, type Packet } from "mqtt";
import { onTeardown } from "./teardown.js";
import { Inbox } from "./wait.js";

export interface Received {
  topic: string;
  payload: Buffer;
  json: Record<string, unknown>;
}

/** A messageId made by a device whose clock is `offsetSeconds` off (the SDK's ids are ObjectIds: time first). */
export const messageIdAt = (offsetSeconds: number) =>
  new ObjectId(ObjectId.generate(Math.floor(Date.now() / 1000) + offsetSeconds)).toHexString();

/**
 * A device that follows PROTOCOL.md and nothing else: username
 * `<product>/<device>`, its secret as password, a persistent session, QoS 1,
 * and no subscription to its own command topic (the broker makes it).
 */
export class TestDevice {
  readonly inbox = new Inbox<Received>();
  /** SUBACKs and PUBRECs as received, for what mqtt.js does not tell. */
  readonly #acks = new Inbox<Packet>();
  /** The CONNACK's Session Present flag (MQTT 3.1.1 §3.2.2.2) of the first connection. */
  sessionPresent = false;

  private constructor(
    readonly client: MqttClient,
    readonly productName: string,
    readonly deviceName: string,
  ) {
    client.on("message", (topic, payload) => {
      let json: Record<string, unknown> = {};
      try {
        json = JSON.parse(payload.toString()) as Record<string, unknown>;
      } catch {
        // not JSON: keep the raw payload only
      }
      this.inbox.push({ topic, payload, json });
    });
    client.on("packetreceive", (p) => {
      if (p.cmd === "suback" || p.cmd === "pubrec") this.#acks.push(p);
    });
  }

  static async connect(
    url: string,
    productName: string,
    deviceName: string,
    secret: string,
    options: IClientOptions = {},
  ): Promise<TestDevice> {
    const client = mqtt.connect(url, {
      clientId: `${productName}/${deviceName}`,
      username: `${productName}/${deviceName}`,
      password: secret,
      clean: false,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ...options,
    });
    onTeardown(() => client.endAsync(true));
    // Listen before the CONNACK: a resumed session's queued commands follow it at once.
    const device = new TestDevice(client, productName, deviceName);
    await new Promise<void>((resolve, reject) => {
      client.once("connect", (connack) => {
        device.sessionPresent = connack.sessionPresent;
        resolve();
      });
      client.once("error", reject);
      client.once("close", () => reject(new Error("connection closed before CONNACK")));
    });
    return device;
  }

  async publish(topic: string, payload: unknown): Promise<void> {
    const body = typeof payload === "string" || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
    await this.client.publishAsync(topic, body, { qos: 1 });
  }

  /** `update_ota_status/<product>/<device>/<messageId>`; returns the messageId. */
  async reportProgress(payload: unknown, messageId = new ObjectId().toHexString()): Promise<string> {
    await this.publish(`update_ota_status/${this.productName}/${this.deviceName}/${messageId}`, payload);
    return messageId;
  }

  async reportStatus(payload: unknown, messageId = new ObjectId().toHexString()): Promise<string> {
    await this.publish(`update_status/${this.productName}/${this.deviceName}/${messageId}`, payload);
    return messageId;
  }

  /** The `$tags` data request devices send on every connect. */
  async requestTags(held: { tags: string[]; tags_version: number }): Promise<void> {
    await this.publish(`get/${this.productName}/${this.deviceName}/$tags/${new ObjectId().toHexString()}`, held);
  }

  /** The next command of the given name, from the device or tag form of the topic. */
  nextCommand(command: string, ms?: number): Promise<Received> {
    return this.inbox.next((m) => m.topic.split("/").includes(command), ms);
  }

  /** SUBSCRIBEs and resolves with the SUBACK's return codes: mqtt.js turns a 0x80 into an error, this reads the SUBACK itself. */
  async subscribeGranted(filters: string[]): Promise<number[]> {
    this.client.subscribe(filters, { qos: 1 }, () => undefined);
    const suback = await this.#acks.next((p) => p.cmd === "suback");
    return suback.cmd === "suback" ? (suback.granted as number[]) : [];
  }

  /**
   * Writes a QoS 2 PUBLISH under the given message id, past mqtt.js (which
   * would complete the handshake), and resolves on its PUBREC. mqtt.js
   * ignores a PUBREC it did not ask for, so no PUBREL follows.
   */
  async publishQos2Unreleased(topic: string, payload: Buffer, messageId: number): Promise<void> {
    this.client.stream.write(encodeQos2Publish(topic, payload, messageId));
    await this.#acks.next((p) => p.cmd === "pubrec" && p.messageId === messageId);
  }

  end(): Promise<void> {
    return this.client.endAsync(true);
  }
}

/** A QoS 2 PUBLISH packet (MQTT 3.1.1 §3.3): type 3 with QoS bits 10, Remaining Length, topic, packet id, payload. */
export function encodeQos2Publish(topic: string, payload: Buffer, messageId: number): Buffer {
  const name = Buffer.from(topic, "utf8");
  const variable = Buffer.alloc(2 + name.length + 2);
  variable.writeUInt16BE(name.length, 0);
  name.copy(variable, 2);
  variable.writeUInt16BE(messageId, 2 + name.length);
  const lengthBytes: number[] = [];
  let remaining = variable.length + payload.length;
  do {
    const digit = remaining % 128;
    remaining = Math.floor(remaining / 128);
    lengthBytes.push(remaining > 0 ? digit | 0x80 : digit);
  } while (remaining > 0);
  return Buffer.concat([Buffer.from([0x34, ...lengthBytes]), variable, payload]);
}

/** Connects as raw MQTT and returns the CONNACK failure code, 0 on success, or -1 when closed without a CONNACK. */
export function connackCode(url: string, opts: IClientOptions): Promise<number> {
  const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  return new Promise<number>((resolve) => {
    c.once("connect", () => resolve(0));
    c.once("error", (err) => resolve((err as { code?: number }).code ?? -1));
    c.once("close", () => resolve(-1));
  }).finally(() => c.end(true));
}
