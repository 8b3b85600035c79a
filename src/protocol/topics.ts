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

/** What a device publishes (PROTOCOL.md, "Device to server"). */
export type DeviceMessageTopic =
  | { kind: "ota_status"; productName: string; deviceName: string; messageId: string }
  | { kind: "status"; productName: string; deviceName: string; messageId: string }
  | { kind: "get"; productName: string; deviceName: string; resource: string; messageId: string };

export type TopicError = "unknown_topic";

const MESSAGE_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
const RESOURCE = /^\$?[A-Za-z0-9_.:-]{1,64}$/;

export function parseDeviceTopic(topic: string): Result<DeviceMessageTopic, TopicError> {
  const parts = topic.split("/");
  const [head, productName, deviceName] = parts;
  if (productName === undefined || deviceName === undefined || !isValidName(productName) || !isValidName(deviceName)) {
    return fail("unknown_topic", `not a device topic: ${topic}`);
  }
  if ((head === "update_ota_status" || head === "update_status") && parts.length === 4) {
    const messageId = parts[3] as string;
    if (!MESSAGE_ID.test(messageId)) return fail("unknown_topic", `bad messageId in ${topic}`);
    return ok({ kind: head === "update_status" ? "status" : "ota_status", productName, deviceName, messageId });
  }
  if (head === "get" && parts.length === 5) {
    const resource = parts[3] as string;
    const messageId = parts[4] as string;
    if (!RESOURCE.test(resource) || !MESSAGE_ID.test(messageId)) {
      return fail("unknown_topic", `bad resource or messageId in ${topic}`);
    }
    return ok({ kind: "get", productName, deviceName, resource, messageId });
  }
  return fail("unknown_topic", `not a device topic: ${topic}`);
}

/** The filters the server's ingest client subscribes to. */
export const INGEST_FILTERS = ["update_ota_status/+/+/+", "update_status/+/+/+", "get/+/+/+/+"] as const;

/** Shared subscription form (MQTT 5 §4.8.2), honoured by Mosquitto and EMQX for 3.1.1 clients too. */
export function sharedFilter(group: string, filter: string): string {
  return `$share/${group}/${filter}`;
}

/** The auto-subscription every device gets on connect (PROTOCOL.md, "Identity and connection"). */
export function deviceCommandFilter(productName: string, deviceName: string): string {
  return `cmd/${productName}/${deviceName}/+/+/+/#`;
}
