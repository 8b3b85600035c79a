import { ObjectId } from "bson";

/** A fresh 24-hex BSON ObjectId, the protocol's requestId (PROTOCOL.md, "Server to device"). */
export function newObjectId(): string {
  return new ObjectId().toHexString();
}

const OBJECT_ID = /^[0-9a-fA-F]{24}$/;

export function isObjectId(value: string): boolean {
  return OBJECT_ID.test(value);
}

/**
 * Sort key of a device report, so the newest wins whatever the arrival order
 * (PROTOCOL.md: "Reports can arrive out of order; the newest wins"). The
 * SDK's messageIds are ObjectIds, which begin with their creation second and
 * end with a per-process counter, so they sort in creation order; any other
 * messageId sorts by receive time. Compare keys as plain bytes.
 */
export function reportOrder(messageId: string, receivedAt: number): string {
  if (OBJECT_ID.test(messageId)) return messageId.toLowerCase();
  const seconds = Math.floor(receivedAt / 1000).toString(16).padStart(8, "0");
  return `${seconds}${(receivedAt % 1000).toString(16).padStart(16, "0")}`;
}
