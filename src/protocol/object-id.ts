import { ObjectId } from "bson";

/** A fresh 24-hex BSON ObjectId, the protocol's requestId (PROTOCOL.md, "Server to device"). */
export function newObjectId(): string {
  return new ObjectId().toHexString();
}

const OBJECT_ID = /^[0-9a-fA-F]{24}$/;

export function isObjectId(value: string): boolean {
  return OBJECT_ID.test(value);
}
