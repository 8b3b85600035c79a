import { randomBytes } from "node:crypto";
import { Socket } from "node:net";
import {
  createSourceEventStream,
  execute,
  parse,
  specifiedRules,
  validate,
  type ValidationRule,
  type DocumentNode,
  type ExecutionArgs,
  type ExecutionResult,
  type GraphQLError,
} from "graphql";
import { LRUCache } from "lru-cache";
import type { WebSocket } from "ws";
import { upTo } from "../lru.js";
import type { PushSource, ReportSink } from "../ota/progress.feed.js";
import type { Context } from "./context.js";

type Result = ExecutionResult | Promise<ExecutionResult>;

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof value === "object" && value !== null && Symbol.asyncIterator in value;
}

const MAX_DOCUMENTS = 1000;

/**
 * Parsing and validation that every subscriber sending the same query
 * shares: a parsed document (its AST and token list) is kilobytes, which
 * 10,000 dashboards would otherwise each hold for as long as they watch.
 */
export function sharedDocuments(options: { maxTokens?: number; rules?: readonly ValidationRule[] } = {}) {
  const rules = [...specifiedRules, ...(options.rules ?? [])];
  const documents = new LRUCache<string, { text: string; document: DocumentNode }>(upTo(MAX_DOCUMENTS));
  const validated = new WeakMap<DocumentNode, readonly GraphQLError[]>();
  return {
    /** graphql-ws keeps each subscribe message for the subscription's life: let it hold the shared text. */
    onSubscribe: (_ctx: unknown, _id: string, payload: { query: string }): void => {
      const known = documents.get(payload.query);
      if (known) payload.query = known.text;
    },
    parse: (source: Parameters<typeof parse>[0]): DocumentNode => {
      const text = typeof source === "string" ? source : source.body;
      let known = documents.get(text);
      if (!known) {
        known = { text, document: parse(source, { maxTokens: options.maxTokens }) };
        documents.set(text, known);
      }
      return known.document;
    },
    validate: (schema: Parameters<typeof validate>[0], document: DocumentNode): readonly GraphQLError[] => {
      let errors = validated.get(document);
      if (!errors) validated.set(document, (errors = validate(schema, document, rules)));
      return errors;
    },
  };
}

/** What a subscriber receives as a `next` payload for a result (errors masked): the same for every subscriber. */
export type FormatResult = (result: ExecutionResult) => object;

/**
 * graphql's `subscribe`, but an event is executed once for all subscribers
 * that asked the same thing: the same document, variables and scopes. Every
 * instance delivers each event object to all its subscribers of the product
 * (one Redis subscription, one parse), so 10,000 dashboards watching a
 * product cost one execution per report instead of 10,000; they then share
 * the result object, which {@link serialisedOnce} serialises once.
 *
 * A subscription whose source can push ({@link PushSource}: the progress
 * feed's watches) is then handed over by {@link pushed} (graphql-ws'
 * `onOperation`) to a {@link PushStream}: the feed gives it each report in
 * the one loop that deals the report to all watchers, and it writes the
 * shared payload, serialised once, under its own message head, to its
 * socket there and then.
 */
export function sharedSubscribe(options: { format: FormatResult }) {
  const documentIds = new WeakMap<DocumentNode, number>();
  // Every subscriber of a query holds its key for as long as it watches: one copy of each.
  const keys = new LRUCache<string, string>(upTo(MAX_DOCUMENTS));
  let nextDocumentId = 0;
  return {
    subscribe: async (args: ExecutionArgs): Promise<AsyncGenerator<ExecutionResult> | ExecutionResult> => {
      const source = await createSourceEventStream(args);
      if (!isAsyncIterable(source)) return source;
      const scopes = (args.contextValue as Context | undefined)?.principal.scopes.join(",") ?? "";
      let documentId = documentIds.get(args.document);
      if (documentId === undefined) documentIds.set(args.document, (documentId = nextDocumentId++));
      const made = `${documentId}|${args.operationName ?? ""}|${JSON.stringify(args.variableValues ?? {})}|${scopes}`;
      let key = keys.get(made);
      if (key === undefined) keys.set(made, (key = made));
      return new SharedStream(source[Symbol.asyncIterator](), args, key);
    },
    /**
     * For graphql-ws' `onOperation`: the stream that replaces `result` when
     * its events can be pushed to `socket` as subscription `id`; undefined
     * leaves graphql-ws iterating `result` itself.
     */
    pushed: (result: unknown, socket: WebSocket, id: string): PushStream | undefined =>
      result instanceof SharedStream ? result.pushTo(socket, id, options.format) : undefined,
  };
}

function isPushSource(iterator: AsyncIterator<unknown>): iterator is AsyncIterator<unknown> & PushSource {
  const maybe = iterator as Partial<PushSource>;
  return typeof maybe.pushTo === "function" && typeof maybe.resume === "function";
}

function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as Promise<T>).then === "function";
}

/**
 * One execution of an event for one key, shared by the subscribers with
 * that key: graphql-js' result (or its promise: resolvers may be async), and
 * for pushed subscribers its payload serialised once, as bytes.
 */
class SharedResult {
  /** What ends every subscriber's `next` message: the payload's JSON and the message's closing brace, as bytes. */
  #tail: Buffer | undefined;
  /** Pushed subscribers waiting for the result before they can send it, in the order they took the event. */
  #waiters: PushStream[] | undefined;

  constructor(readonly result: Result) {}

  /** The message's tail; undefined while the result is being made, and `stream` is then handed it when it is. */
  tail(format: FormatResult, stream: PushStream): Buffer | undefined {
    if (this.#tail !== undefined) return this.#tail;
    const result = this.result;
    if (!isPromise(result)) return (this.#tail = tailOf(format(result)));
    if (this.#waiters) {
      this.#waiters.push(stream);
      return undefined;
    }
    this.#waiters = [stream];
    result.then(
      (made) => {
        let tail: Buffer;
        try {
          tail = this.#tail = tailOf(format(made));
        } catch (err) {
          return this.#fail(err);
        }
        const waiters = this.#waiters ?? [];
        this.#waiters = undefined;
        for (const waiter of waiters) waiter.made(tail);
      },
      (err: unknown) => this.#fail(err),
    );
    return undefined;
  }

  #fail(err: unknown): void {
    const waiters = this.#waiters ?? [];
    this.#waiters = undefined;
    for (const waiter of waiters) waiter.fail(err);
  }
}

const tailOf = (payload: object): Buffer => Buffer.from(`${JSON.stringify(payload)}}`);

/** The event's result for `key`, made on first use and kept on the event for the other subscribers. */
function sharedResult(event: unknown, args: ExecutionArgs, key: string): SharedResult {
  if (typeof event !== "object" || event === null || !Object.isExtensible(event)) return new SharedResult(execute({ ...args, rootValue: event }));
  const held = event as { [RESULTS]?: Map<string, SharedResult> };
  let forEvent = held[RESULTS];
  if (!forEvent) Object.defineProperty(event, RESULTS, { value: (forEvent = new Map()) });
  let shared = forEvent.get(key);
  if (!shared) forEvent.set(key, (shared = new SharedResult(execute({ ...args, rootValue: event }))));
  return shared;
}

/**
 * One subscriber's stream of shared results, iterated by graphql-ws. A
 * class, not an object of closures: 10,000 subscribers hold one each.
 */
class SharedStream implements AsyncGenerator<ExecutionResult> {
  constructor(
    private readonly iterator: AsyncIterator<unknown>,
    private readonly args: ExecutionArgs,
    private readonly key: string,
  ) {}

  async next(): Promise<IteratorResult<ExecutionResult, undefined>> {
    const step = await this.iterator.next();
    return step.done ? { done: true, value: undefined } : { done: false, value: await sharedResult(step.value, this.args, this.key).result };
  }

  async return(): Promise<IteratorResult<ExecutionResult, undefined>> {
    await this.iterator.return?.();
    return { done: true, value: undefined };
  }

  async throw(err: unknown): Promise<IteratorResult<ExecutionResult, undefined>> {
    await this.iterator.return?.();
    throw err;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** This subscription delivered by push, when its source can push and its socket take whole frames; undefined otherwise. */
  pushTo(socket: WebSocket, id: string, format: FormatResult): PushStream | undefined {
    const source = this.iterator;
    const raw = rawSocketOf(socket);
    if (!isPushSource(source) || !raw) return undefined;
    const stream = new PushStream(source, this.args, this.key, socket, raw, id, format);
    source.pushTo(stream);
    return stream;
  }
}

/** How a pending `next()` of a {@link PushStream} is settled. */
interface Settle {
  resolve: (step: IteratorResult<ExecutionResult, undefined>) => void;
  reject: (err: unknown) => void;
}

/**
 * A subscriber whose events are pushed (see {@link sharedSubscribe}): per
 * delivery, a map lookup, one frame (its head, then the result's bytes made
 * once) and one write; no promise, no per-message object of graphql-ws or
 * ws. Messages are the ones graphql-ws would send (`stringifyMessage` of
 * `{ id, type: "next", payload }`, with the payload `onNext` would give:
 * `format`). graphql-ws still owns the subscription: it iterates this
 * stream, whose `next()` settles only when the subscription ends (done:
 * graphql-ws sends `complete`; thrown: `error`), calls `return()` on
 * `complete` and on close, and keeps the ids, limits, pings and close codes.
 *
 * Per subscriber, as graphql-ws' own loop does (it awaits each send's
 * callback before taking the next event), at most what one send left in
 * user space is buffered: when a send leaves bytes the kernel did not take,
 * `take` says so and the feed holds this subscriber's later reports in its
 * bounded queue (latest per device, counted) until those bytes are out. A
 * report whose shared result is still being made (an async resolver) holds
 * the queue the same way, so order is kept.
 */
export class PushStream implements AsyncGenerator<ExecutionResult>, ReportSink {
  /** What graphql-ws' stringifyMessage writes before a `next` payload: `{"id":…,"type":"next","payload":`. */
  readonly #head: string;
  readonly #headBytes: number;
  /** A send left bytes in user space: take nothing more until they are out. */
  #backedUp = false;
  /** The tick of this stream's last frame ({@link TickWrites}). */
  #tick = -1;
  /** A taken report's shared result is still being made. */
  #waiting = false;
  #closed = false;
  /** How the stream ended, when it did before graphql-ws asked (`next`). */
  #outcome: { err: unknown } | undefined;
  #settle: Settle | undefined;
  readonly #drained = (): void => {
    this.#backedUp = false;
    if (!this.#closed && !this.#waiting) this.source.resume();
  };

  constructor(
    private readonly source: AsyncIterator<unknown> & PushSource,
    private readonly args: ExecutionArgs,
    private readonly key: string,
    private readonly socket: WebSocket,
    /** The TCP socket under `socket`, which its frames are written to ({@link rawSocketOf}). */
    private readonly raw: Socket,
    id: string,
    private readonly format: FormatResult,
  ) {
    this.#head = `{"id":${JSON.stringify(id)},"type":"next","payload":`;
    this.#headBytes = Buffer.byteLength(this.#head);
  }

  take(event: unknown): boolean {
    if (this.#closed) return true;
    const tail = sharedResult(event, this.args, this.key).tail(this.format, this);
    if (tail !== undefined) return this.#send(tail);
    this.#waiting = true;
    return false;
  }

  /** The shared result this stream waited for is in. */
  made(tail: Buffer): void {
    this.#waiting = false;
    if (this.#closed) return;
    if (this.#send(tail)) this.source.resume();
  }

  /** The shared result this stream waited for could not be made: the subscription ends with the error, as a pulled one would. */
  fail(err: unknown): void {
    this.#waiting = false;
    void this.source.return?.();
    this.end(err);
  }

  end(err?: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    const outcome = { err };
    if (this.#settle) this.#finish(this.#settle, outcome);
    else this.#outcome = outcome;
  }

  next(): Promise<IteratorResult<ExecutionResult, undefined>> {
    return new Promise((resolve, reject) => {
      if (this.#closed) this.#finish({ resolve, reject }, this.#outcome ?? { err: undefined });
      else this.#settle = { resolve, reject };
    });
  }

  async return(): Promise<IteratorResult<ExecutionResult, undefined>> {
    this.#closed = true;
    await this.source.return?.();
    const settle = this.#settle;
    this.#settle = undefined;
    settle?.resolve({ done: true, value: undefined });
    return { done: true, value: undefined };
  }

  async throw(err: unknown): Promise<IteratorResult<ExecutionResult, undefined>> {
    await this.return();
    throw err;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  #finish(settle: Settle, outcome: { err: unknown }): void {
    this.#settle = undefined;
    if (outcome.err === undefined) settle.resolve({ done: true, value: undefined });
    else settle.reject(outcome.err);
  }

  #send(tail: Buffer): boolean {
    const raw = this.raw;
    // A closing socket takes nothing more; graphql-ws returns this stream once it has closed.
    if (this.socket.readyState !== this.socket.OPEN || raw.destroyed) return true;
    // A second frame of this stream in one tick corks its socket: the tick's frames leave together when it ends.
    if (this.#tick === writes.tick) writes.cork(raw);
    else this.#tick = writes.sent();
    // No callback: a write with one costs a tick per socket; almost every write is taken by the kernel at once.
    raw.write(textFrame(this.#head, this.#headBytes, tail));
    // Gathered frames may wait in user space up to a bound; a frame written at once is out, or the kernel has not taken it all.
    const left = raw.writableLength;
    if (left === 0 || (left <= GATHER_BYTES_MAX && raw.writableCorked > 0)) return true;
    // An empty write's callback comes once what was written before it is out.
    this.#backedUp = true;
    raw.write(EMPTY, this.#drained);
    return false;
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * What one tick's gathered frames may hold in user space on a socket before
 * the stream backs up.
 */
const GATHER_BYTES_MAX = 16 * 1024;

/**
 * A stream's frames within one tick, written together: its first goes out at
 * once (a fan-out writes one frame per stream: nothing to gather), its second
 * corks the socket, and the rest join it until the tick ends, when they leave
 * in one writev. A subscriber of a busy product, whose reports come in
 * batches (an ingest batch is one Redis message, and a read holds several),
 * then costs two system calls a tick instead of one per report.
 */
class TickWrites {
  /** Counts ticks with a frame sent; a stream whose last frame was sent in the current one gathers. */
  tick = 0;
  #scheduled = false;
  readonly #corked: Socket[] = [];
  readonly #flush = (): void => {
    this.#scheduled = false;
    this.tick++;
    for (const raw of this.#corked) raw.uncork();
    this.#corked.length = 0;
  };

  /** A stream sends a frame at once in this tick; returns the tick. */
  sent(): number {
    if (!this.#scheduled) {
      this.#scheduled = true;
      process.nextTick(this.#flush);
    }
    return this.tick;
  }

  /** Corks `raw` until the tick ends (once). */
  cork(raw: Socket): void {
    if (raw.writableCorked > 0) return;
    raw.cork();
    this.#corked.push(raw);
  }
}

const writes = new TickWrites();

/**
 * Where a result keeps its stand-in, and an event its results: a hidden
 * property rather than a WeakMap, whose entries (one per report, thousands a
 * second) cost V8's collector more than the serialisation saved for a
 * single subscriber. Not enumerable: spreads and JSON do not see it.
 */
const STAND_IN = Symbol("iothub-ota.standIn");
const RESULTS = Symbol("iothub-ota.results");

/**
 * The TCP socket under a `ws` WebSocket, when this module may write whole
 * frames to it itself: no extension negotiated (the server offers none:
 * `perMessageDeflate` is off), so a message is one plain frame and ws'
 * sender never holds one back (it queues only while compressing). Per
 * delivery this spares ws' send (a frame header, an options object, a
 * corked pair of writes and a writev) for one buffer and one write, and the
 * payload is copied from bytes made once instead of encoded per socket.
 */
function rawSocketOf(socket: WebSocket): Socket | undefined {
  if (socket.extensions !== "") return undefined;
  const raw = (socket as unknown as { _socket?: unknown })._socket;
  return raw instanceof Socket ? raw : undefined;
}

/**
 * A final, unmasked text frame carrying `head` then `tail` (RFC 6455 §5.2:
 * FIN and opcode 1, then the payload length in 7 bits, or 126 and 16 bits,
 * or 127 and 64 bits; a server never masks, §5.1).
 */
function textFrame(head: string, headBytes: number, tail: Buffer): Buffer {
  const length = headBytes + tail.length;
  const offset = length < 126 ? 2 : length < 65_536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(offset + length);
  frame[0] = 0x81;
  if (offset === 2) frame[1] = length;
  else if (offset === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeBigUInt64BE(BigInt(length), 2);
  }
  frame.write(head, offset, headBytes, "utf8");
  tail.copy(frame, offset + headBytes);
  return frame;
}

/** A result's place in graphql-ws' message: its JSON, made once, and a marker in its stead. */
class StandIn {
  #json: string | undefined;

  constructor(
    private readonly result: object,
    private readonly marker: string,
    private readonly hand: (json: string) => void,
  ) {}

  toJSON(): string {
    this.hand((this.#json ??= JSON.stringify(this.result)));
    return this.marker;
  }
}

/**
 * Delivery of one execution result to many graphql-ws subscribers with one
 * `JSON.stringify` of it. graphql-ws 6 sends every `next` as
 * `JSON.stringify({ id, type: "next", payload })` per subscriber, so a
 * result shared by 10,000 subscribers ({@link sharedSubscribe}) would be
 * serialised 10,000 times. Here {@link payload} (for `onNext`) hands
 * graphql-ws a stand-in whose `toJSON` gives a marker string and leaves the
 * result's JSON, made once per result, in a slot; {@link wrap}ped sockets
 * splice that JSON in place of the marker, the only per-subscriber work being
 * the message's short head (`{"id":…,"type":"next","payload":`).
 *
 * This rests on graphql-ws' ws adapter calling the socket's `send` in the
 * same synchronous step as its stringify (`use/ws.js`: `send(data)` →
 * `socket.send(data, cb)` inside the Promise executor), so nothing can run
 * between a `toJSON` and the `send` it belongs to. The marker carries a
 * random nonce: no device-sent text can spell it.
 */
export function serialisedOnce() {
  const marker = `\u0000iothub-ota-shared:${randomBytes(12).toString("hex")}`;
  const tail = `"payload":${JSON.stringify(marker)}}`;
  /** The JSON of the payload whose marker was stringified last, until its socket takes it. */
  let slot: string | undefined;
  const wrapped = new WeakSet<WebSocket>();

  function splice(data: unknown): unknown {
    if (typeof data !== "string" || slot === undefined || !data.endsWith(tail)) return data;
    const json = slot;
    slot = undefined;
    return `${data.slice(0, data.length - tail.length)}"payload":${json}}`;
  }

  return {
    /** Makes the socket splice shared payloads into its messages (once per socket). */
    wrap(socket: WebSocket): void {
      if (wrapped.has(socket)) return;
      wrapped.add(socket);
      const send = socket.send.bind(socket) as (data: unknown, ...rest: unknown[]) => void;
      (socket as { send: (data: unknown, ...rest: unknown[]) => void }).send = (data, ...rest) => send(splice(data), ...rest);
    },
    /**
     * What `onNext` returns for `result`: the same stand-in for every
     * subscriber given the same result object, serialised on first use.
     */
    payload(result: object): object {
      const held = result as { [STAND_IN]?: StandIn };
      let standIn = held[STAND_IN];
      if (!standIn) {
        standIn = new StandIn(result, marker, (json) => (slot = json));
        Object.defineProperty(result, STAND_IN, { value: standIn });
      }
      return standIn;
    },
  };
}
