import { INGEST_FILTERS, parseCommandTopic } from "./topics.js";

/** `$share/<group>/<filter>` (MQTT 5 §4.8.2) or EMQX's older `$queue/<filter>`: the filter, and whether it was shared. */
function unshare(filter: string): string {
  const shared = /^\$share\/[^/+#]+\/(.+)$/.exec(filter);
  if (shared) return shared[1] as string;
  return filter.startsWith("$queue/") ? filter.slice("$queue/".length) : filter;
}

/**
 * What the server's own MQTT client may subscribe to on an external broker
 * (src/mqtt/server.client.ts): the ingest filters, shared or not. EMQX 5
 * authorizes a shared subscription by its real filter (emqx_channel,
 * `get_shared_real_topic`); the `$share/<group>/` form is taken too, for
 * brokers that pass it whole.
 */
export function serverMaySubscribe(filter: string): boolean {
  return (INGEST_FILTERS as readonly string[]).includes(unshare(filter));
}

/**
 * What the server's own MQTT client may publish: commands, to one device or
 * to a tag (PROTOCOL.md, "Server to device: commands"), never retained (the
 * protocol has no retained messages; one would outlive every later check).
 */
export function serverMayPublish(topic: string, retain: boolean): boolean {
  // A topic name holds no wildcard or NUL (MQTT 3.1.1 §4.7.1, §1.5.3); the command grammar does not check the command's level.
  return !retain && !/[+#\u0000]/.test(topic) && parseCommandTopic(topic).ok;
}
