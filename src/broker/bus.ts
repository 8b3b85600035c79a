import type { EventEmitter } from "node:events";
import type { Redis } from "ioredis";
import MQEmitterRedis from "mqemitter-redis";
import { quitAll } from "../storage/redis.js";

/**
 * Where the embedded broker's message bus (aedes' `mq`) runs: in this process
 * (one instance alone), or over Redis pub/sub, shared by every instance of a
 * deployment, so that devices may connect to any of them.
 */
export type BrokerBusKind = "memory" | "redis";

/** A message on aedes' bus: a publish packet, or one of aedes' own `$SYS/...` notices. */
type Message = { topic: string } & Record<string, unknown>;
type Listener = (message: Message, done: () => void) => void;

/** The parts of mqemitter-redis 7.2 this class builds on: its own `_`-methods are the in-process mqemitter's (mqemitter-redis.js). */
interface MQEmitterRedisBase {
  readonly subConn: Redis;
  readonly pubConn: Redis;
  readonly state: EventEmitter;
  closing?: boolean;
  closed: boolean;
  emit(message: Message, done?: (err?: Error) => void): void;
  _on(topic: string, listener: Listener): void;
  _removeListener(topic: string, listener: Listener): void;
  _emit(message: Message, done?: () => void): void;
  _close(done: () => void): void;
}
const Base = MQEmitterRedis as unknown as new (options: object) => MQEmitterRedisBase;

/** aedes' own mqemitter options (aedes.js): its default concurrency, and `#` matching the parent level [MQTT-4.7.1-3]. */
const AEDES_EMITTER_OPTIONS = { concurrency: 100, matchEmptyLevels: true };

/**
 * mqemitter-redis with one Redis channel per deployment instead of one
 * subscription per topic filter. Plain mqemitter-redis SUBSCRIBEs (or
 * PSUBSCRIBEs) every filter any client holds: three or more patterns per
 * connected device, and Redis matches every PUBLISH against every pattern
 * of every instance, so each aedes notice (one per CONNECT) would cost Redis
 * time in proportion to the fleet. Here every instance hears every bus
 * message on one channel and matches it in process, with mqemitter's own
 * matcher. That costs each instance one decode per message: what travels
 * is commands, device-to-device messages and aedes' notices (heartbeats,
 * new clients, subscription changes), never device reports, which ingest
 * takes before aedes would publish them (embedded.broker.ts).
 *
 * Redis pub/sub delivers at most once: a message sent while an instance's
 * subscriber connection is down never reaches it (see the broker's resync).
 */
export class RedisBus extends Base {
  readonly #channel: string;

  constructor(channel: string, subscriber: Redis, publisher: Redis, onError: (err: Error) => void) {
    super({ ...AEDES_EMITTER_OPTIONS, subConn: subscriber, pubConn: publisher });
    this.#channel = channel;
    // mqemitter-redis re-emits its connections' errors here: unheard, an 'error' event ends the process.
    this.state.on("error", onError);
  }

  /** Connects and subscribes: resolves once every message published from now on reaches this instance. */
  async start(): Promise<void> {
    await Promise.all([this.subConn.connect(), this.pubConn.connect()]);
    await this.subConn.subscribe(this.#channel);
  }

  /**
   * Called on every reconnection of the subscriber from now on (after
   * {@link start}), once the channel is subscribed again: messages published
   * while it was away never arrive.
   */
  onResubscribed(listener: () => void, onError: (err: Error) => void): void {
    // ioredis resubscribes by itself but says nothing when that took effect: a SUBSCRIBE of its own, answered once it has.
    this.subConn.on("ready", () => void this.subConn.subscribe(this.#channel).then(listener, onError));
  }

  on(topic: string, listener: Listener, done?: () => void): this {
    this._on(topic, listener);
    if (done) setImmediate(done);
    return this;
  }

  removeListener(topic: string, listener: Listener, done?: () => void): this {
    this._removeListener(topic, listener);
    if (done) setImmediate(done);
    return this;
  }

  /** Published on the deployment's channel (not on a channel named after the topic), inside an envelope. */
  override emit(message: Message, done?: (err?: Error) => void): void {
    super.emit({ topic: this.#channel, message }, done);
  }

  /** mqemitter-redis hands what it received here (its handler calls `_emit`): unwrapped, then matched in process. */
  override _emit(envelope: Message, done?: () => void): void {
    const message = envelope.message as Message | undefined;
    if (message && typeof message.topic === "string") super._emit(message, done);
    else done?.();
  }

  /** Like mqemitter-redis' close, which waits for QUIT's 'end' forever when Redis is down. */
  close(done: () => void = () => undefined): void {
    if (this.closed || this.closing) return done();
    this.closing = true;
    void quitAll([this.subConn, this.pubConn]).finally(() => this._close(done));
  }

  /** Delivers a message to this instance's listeners only (what a missed message would have done). */
  emitLocal(message: Message): void {
    super._emit(message);
  }
}
