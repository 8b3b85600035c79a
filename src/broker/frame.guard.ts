import type { Socket } from "node:net";

/**
 * Where a byte stream stands in MQTT framing (MQTT 3.1.1 §2.2): every packet
 * is a type byte, a Remaining Length of 1..4 bytes (7 bits each, §2.2.3),
 * then that many bytes.
 */
export type FrameState =
  | { phase: "type" }
  | { phase: "length"; value: number; multiplier: number; bytes: number }
  | { phase: "body"; remaining: number };

export type FrameVerdict =
  | { ok: true; state: FrameState }
  | { ok: false; reason: "too_large"; declared: number }
  | { ok: false; reason: "malformed_length" };

export const FRAME_START: FrameState = { phase: "type" };

/**
 * Follows the framing through one chunk and refuses a packet as soon as its
 * declared length is read, before any of its body is buffered: aedes'
 * parser (mqtt-packet) would otherwise collect up to 256 MB per connection
 * before even authenticating it. `maxBytes` bounds the whole packet, as the
 * fixed header is at most 5 bytes.
 */
export function scanFrames(state: FrameState, chunk: Uint8Array, maxBytes: number): FrameVerdict {
  let s = state;
  let i = 0;
  while (i < chunk.length) {
    switch (s.phase) {
      case "type":
        i++;
        s = { phase: "length", value: 0, multiplier: 1, bytes: 0 };
        break;
      case "length": {
        const byte = chunk[i++] as number;
        const value = s.value + (byte & 0x7f) * s.multiplier;
        const bytes = s.bytes + 1;
        if (byte & 0x80) {
          // §2.2.3: at most four length bytes.
          if (bytes === 4) return { ok: false, reason: "malformed_length" };
          s = { phase: "length", value, multiplier: s.multiplier * 128, bytes };
          break;
        }
        if (1 + bytes + value > maxBytes) return { ok: false, reason: "too_large", declared: value };
        s = value === 0 ? FRAME_START : { phase: "body", remaining: value };
        break;
      }
      case "body": {
        const take = Math.min(s.remaining, chunk.length - i);
        i += take;
        s = take === s.remaining ? FRAME_START : { phase: "body", remaining: s.remaining - take };
        break;
      }
      default: {
        const never: never = s;
        return never;
      }
    }
  }
  return { ok: true, state: s };
}

/**
 * Watches what aedes reads from a connection and destroys the connection at
 * the first packet declaring more than `maxBytes`. A 'data' listener beside
 * aedes' 'readable' one sees each chunk as aedes reads it, just before the
 * parser does, and does not change who controls the flow (Node's streams:
 * 'readable' takes precedence).
 */
export function guardFrames(socket: Socket, maxBytes: number, onRefused: (verdict: Exclude<FrameVerdict, { ok: true }>) => void): void {
  let state: FrameState = FRAME_START;
  const onData = (chunk: Buffer) => {
    const verdict = scanFrames(state, chunk, maxBytes);
    if (verdict.ok) {
      state = verdict.state;
      return;
    }
    socket.off("data", onData);
    socket.destroy();
    onRefused(verdict);
  };
  socket.on("data", onData);
}
