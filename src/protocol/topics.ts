import { isValidName } from "./names.js";
import { fail, ok, type Result } from "./result.js";

/** Commands this server sends (PROTOCOL.md, "Server to device: commands"). */
export type CommandName = "$ota_upgrade" | "$set_tags";
export type Encoding = "plain" | "base64";

export interface CommandTarget {
  productName: string;
  /** Exactly one of deviceName and tag. */
  deviceName?: string;
  tag?: string;
}

export interface CommandTopic {
  target: CommandTarget;
  command: string;
  encoding: Encoding;
  requestId: string;
  expiresAt?: number;
}

/** `cmd/<product>/<device>/<command>/<encoding>/<requestId>[/<expiresAt>]` or the `tags/...` form. */
export function buildCommandTopic(c: CommandTopic): string {
  const { productName, deviceName, tag } = c.target;
  const head =
    deviceName !== undefined ? `cmd/${productName}/${deviceName}` : `tags/${productName}/${tag as string}/cmd`;
  const tail = `${c.command}/${c.encoding}/${c.requestId}`;
  return c.expiresAt === undefined ? `${head}/${tail}` : `${head}/${tail}/${c.expiresAt}`;
}

/** Reads a command topic of either form; what a device does with each command it receives. */
export function parseCommandTopic(topic: string): Result<CommandTopic, TopicError> {
  const parts = topic.split("/");
  let productName: string | undefined;
  let rest: string[];
  let target: CommandTarget;
  if (parts[0] === "cmd" && (parts.length === 6 || parts.length === 7)) {
    productName = parts[1];
    target = { productName: parts[1] as string, deviceName: parts[2] as string };
    rest = parts.slice(3);
  } else if (parts[0] === "tags" && parts[3] === "cmd" && (parts.length === 7 || parts.length === 8)) {
    productName = parts[1];
    target = { productName: parts[1] as string, tag: parts[2] as string };
    rest = parts.slice(4);
  } else {
    return fail("unknown_topic", `not a command topic: ${topic}`);
  }
  const [command, encoding, requestId, expires] = rest as [string, string, string, string | undefined];
  const name = target.deviceName ?? target.tag ?? "";
  if (!productName || !isValidName(productName) || !isValidName(name) || command === "" || requestId === "") {
    return fail("unknown_topic", `not a command topic: ${topic}`);
  }
  if (encoding !== "plain" && encoding !== "base64") return fail("unknown_topic", `unknown encoding in ${topic}`);
  if (expires !== undefined && !/^\d{1,12}$/.test(expires)) return fail("unknown_topic", `bad expiresAt in ${topic}`);
  return ok({ target, command, encoding, requestId, ...(expires === undefined ? {} : { expiresAt: Number(expires) }) });
}

/** What a device publishes that this server acts on (PROTOCOL.md, "Device to server"). */
export type DeviceMessageTopic =
  | { kind: "ota_status"; productName: string; deviceName: string; messageId: string }
  | { kind: "status"; productName: string; deviceName: string; messageId: string }
  | { kind: "get"; productName: string; deviceName: string; resource: string; messageId: string };

/**
 * Everything the IotHub device contract lets a device publish (PROTOCOL.md,
 * "Device to server" and "Other device traffic"). `deviceName` is always the
 * publishing device: for `m2m` it is the sender, `target` the recipient.
 */
export type DevicePublishTopic =
  | DeviceMessageTopic
  | { kind: "upload_data"; productName: string; deviceName: string; type: string; messageId: string }
  | { kind: "cmd_resp" | "rpc_resp"; productName: string; deviceName: string; command: string; requestId: string; messageId: string }
  | { kind: "m2m"; productName: string; deviceName: string; target: string; messageId: string };

export type TopicError = "unknown_topic";

const MESSAGE_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
/** Resources, data types and command names: `$tags`, `$shadow_updated`, `sample`, `$ota_upgrade`. */
const RESOURCE = /^\$?[A-Za-z0-9_.:-]{1,64}$/;

/**
 * Reads any topic of the device contract. One grammar for both uses: the
 * broker's access control (a topic that does not parse is outside the
 * contract) and ingest, so nothing the broker lets through is malformed there.
 */
export function parseDevicePublish(topic: string): Result<DevicePublishTopic, TopicError> {
  const parts = topic.split("/");
  const [head, productName, second] = parts;
  const unknown = () => fail("unknown_topic", `not a device topic: ${topic}`);
  if (productName === undefined || second === undefined || !isValidName(productName) || !isValidName(second)) return unknown();
  const last = parts[parts.length - 1] as string;
  if (!MESSAGE_ID.test(last)) return fail("unknown_topic", `bad messageId in ${topic}`);
  const messageId = last;
  const deviceName = second;
  switch (head) {
    case "update_ota_status":
    case "update_status":
      if (parts.length !== 4) return unknown();
      return ok({ kind: head === "update_status" ? "status" : "ota_status", productName, deviceName, messageId });
    case "get":
    case "upload_data": {
      const resource = parts[3] as string;
      if (parts.length !== 5 || !RESOURCE.test(resource)) return unknown();
      return ok(
        head === "get"
          ? { kind: "get", productName, deviceName, resource, messageId }
          : { kind: "upload_data", productName, deviceName, type: resource, messageId },
      );
    }
    case "cmd_resp":
    case "rpc_resp": {
      const [command, requestId] = parts.slice(3, 5) as [string, string];
      if (parts.length !== 6 || !RESOURCE.test(command) || !MESSAGE_ID.test(requestId)) return unknown();
      return ok({ kind: head, productName, deviceName, command, requestId, messageId });
    }
    case "m2m": {
      // m2m/<product>/<target>/<sender>/<messageId>
      const sender = parts[3] as string;
      if (parts.length !== 5 || !isValidName(sender)) return unknown();
      return ok({ kind: "m2m", productName, deviceName: sender, target: second, messageId });
    }
    default:
      return unknown();
  }
}

/** The topics ingest takes (those of {@link INGEST_FILTERS}); any other topic, of the contract or not, is refused. */
export function parseDeviceTopic(topic: string): Result<DeviceMessageTopic, TopicError> {
  const parsed = parseDevicePublish(topic);
  if (!parsed.ok) return parsed;
  const m = parsed.value;
  switch (m.kind) {
    case "ota_status":
    case "status":
    case "get":
      return ok(m);
    case "upload_data":
    case "cmd_resp":
    case "rpc_resp":
    case "m2m":
      return fail("unknown_topic", `not an ingest topic: ${topic}`);
    default: {
      const never: never = m;
      return never;
    }
  }
}

/** The filters the server's ingest client subscribes to. */
export const INGEST_FILTERS = ["update_ota_status/+/+/+", "update_status/+/+/+", "get/+/+/+/+"] as const;

/** Shared subscription form (MQTT 5 §4.8.2), honoured by Mosquitto and EMQX for 3.1.1 clients too. */
export function sharedFilter(group: string, filter: string): string {
  return `$share/${group}/${filter}`;
}

/** The command auto-subscription every device gets on connect (PROTOCOL.md, "Identity and connection"). */
export function deviceCommandFilter(productName: string, deviceName: string): string {
  return `cmd/${productName}/${deviceName}/+/+/+/#`;
}

/**
 * Every auto-subscription of a device (PROTOCOL.md, "Identity and connection"):
 * commands, synchronous commands, and messages from devices of its product.
 */
export function deviceAutoSubscriptions(productName: string, deviceName: string): string[] {
  return [deviceCommandFilter(productName, deviceName), `rpc/${productName}/${deviceName}/+/+/+/#`, `m2m/${productName}/${deviceName}/+/+`];
}
