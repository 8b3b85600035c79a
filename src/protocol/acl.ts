import { isValidName } from "./names.js";
import { fail, ok, type Result } from "./result.js";
import { deviceAutoSubscriptions, parseDevicePublish, type DevicePublishTopic } from "./topics.js";

export interface DeviceIdentity {
  productName: string;
  deviceName: string;
}

/** MQTT username is `<product>/<device>` (PROTOCOL.md, "Identity and connection"). */
export function parseUsername(username: string | undefined): Result<DeviceIdentity, "bad_username"> {
  const parts = (username ?? "").split("/");
  if (parts.length !== 2 || !isValidName(parts[0] as string) || !isValidName(parts[1] as string)) {
    return fail("bad_username", "username must be <product>/<device>");
  }
  return ok({ productName: parts[0] as string, deviceName: parts[1] as string });
}

/** Client id is `<product>/<device>` or `<product>/<device>/<suffix>`; any other id is refused. */
export function clientIdMatches(clientId: string, id: DeviceIdentity): boolean {
  const prefix = `${id.productName}/${id.deviceName}`;
  if (clientId === prefix) return true;
  if (!clientId.startsWith(`${prefix}/`)) return false;
  const suffix = clientId.slice(prefix.length + 1);
  return suffix.length > 0 && !/[/+#\u0000]/.test(suffix);
}

/**
 * The device a client id belongs to, for an id {@link clientIdMatches} accepted
 * (`<product>/<device>[/<suffix>]`); undefined for any other id.
 */
export function clientIdentity(clientId: string): DeviceIdentity | undefined {
  const [productName, deviceName] = clientId.split("/", 2);
  if (productName === undefined || deviceName === undefined) return undefined;
  const id = { productName, deviceName };
  return isValidName(productName) && isValidName(deviceName) && clientIdMatches(clientId, id) ? id : undefined;
}

/** PROTOCOL.md, "Access control": what a device may publish to (as filters, for documentation and tests). */
export function publishFilters({ productName: p, deviceName: d }: DeviceIdentity): string[] {
  return [
    `upload_data/${p}/${d}/+/+`,
    `update_status/${p}/${d}/+`,
    `cmd_resp/${p}/${d}/+/+/+`,
    `rpc_resp/${p}/${d}/+/+/+`,
    `get/${p}/${d}/+/+`,
    `m2m/${p}/+/${d}/+`,
    `update_ota_status/${p}/${d}/+`,
  ];
}

/**
 * PROTOCOL.md, "Access control": what a device may subscribe to. The
 * auto-subscriptions are the broker's, but a device repeating one of its own
 * gains nothing it does not have.
 */
export function subscribeFilters({ productName: p, deviceName: d }: DeviceIdentity): string[] {
  return [`tags/${p}/+/cmd/+/+/+/#`, ...deviceAutoSubscriptions(p, d)];
}

/** Whether a concrete topic name matches a filter (MQTT 3.1.1 §4.7). */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith("$") && !filter.startsWith("$")) return false; // §4.7.2
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === "#") return true;
    if (i >= t.length) return false;
    if (level !== "+" && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/**
 * Whether every topic the `requested` filter could match is matched by
 * `allowed`: a subscription may narrow what it is granted, never widen it.
 */
export function filterCovered(allowed: string, requested: string): boolean {
  const a = allowed.split("/");
  const r = requested.split("/");
  for (let i = 0; i < a.length; i++) {
    const level = a[i];
    if (level === "#") return true;
    if (i >= r.length) return false;
    const req = r[i];
    if (req === "#") return false;
    if (level === "+") continue;
    if (req !== level) return false;
  }
  // `x/#` also matches `x` itself (§4.7.1.2), so a shorter request is covered only then.
  return r.length === a.length;
}

/**
 * The contract topic a device may publish, or null when the topic is outside
 * the contract or names another device (as the sender, for `m2m`). The
 * parser's name rules leave no room for wildcards, NUL or `$` levels.
 */
export function authorizedPublish(id: DeviceIdentity, topic: string): DevicePublishTopic | null {
  const parsed = parseDevicePublish(topic);
  if (!parsed.ok) return null;
  const m = parsed.value;
  return m.productName === id.productName && m.deviceName === id.deviceName ? m : null;
}

export function canPublish(id: DeviceIdentity, topic: string): boolean {
  return authorizedPublish(id, topic) !== null;
}

export function canSubscribe(id: DeviceIdentity, filter: string): boolean {
  return subscribeFilters(id).some((f) => filterCovered(f, filter));
}
