import { setTimeout as sleep } from "node:timers/promises";
import { duration } from "./cli.output.js";

/** How a watch takes a lost connection: tried again with backoff for `timeoutMs`, each step noted for people. */
export interface ReconnectPolicy {
  /** How long to keep trying once the connection is lost; 0: give up at once. */
  timeoutMs: number;
  /** A line for stderr: the connection lost, or back. */
  note(line: string): void;
}

/**
 * Close codes that are the API's answer, not a lost connection: the token
 * refused or revoked (4401), access refused (4403). Asking again gets the
 * same answer. (graphql-ws itself never retries 4401, 4400, 4500 and its
 * protocol errors; it would retry 4403.)
 */
const ANSWERS = new Set([4401, 4403]);

const FIRST_WAIT_MS = 500;
const LONGEST_WAIT_MS = 5_000;

/**
 * The reconnection state of one graphql-ws client, as its `shouldRetry`,
 * `retryWait` and `connected` hooks: a connection that was up and is lost is
 * tried again, after 0.5 s, 1 s, 2 s… (at most 5 s, jittered so that the
 * watchers of a restarted server do not all come back at once) until it is
 * back or `timeoutMs` has passed since it was lost; then {@link gaveUp}.
 * A server never reached is not retried: that is an error like any other
 * command's.
 */
export class Reconnection {
  #everConnected = false;
  #lostAt: number | undefined;
  #gaveUp = false;

  constructor(
    private readonly policy: ReconnectPolicy,
    private readonly url: string,
    private readonly now: () => number = Date.now,
  ) {}

  /** The connection was lost and did not come back in time: the watch's error is that, not the last close. */
  get gaveUp(): boolean {
    return this.#gaveUp;
  }

  connected(): void {
    if (this.#lostAt !== undefined) this.policy.note(`reconnected to ${this.url}`);
    this.#lostAt = undefined;
    this.#everConnected = true;
  }

  /** graphql-ws' `shouldRetry`: `code` is the close code, when the socket was closed; `why` says what happened, for the note. */
  shouldRetry(code: number | undefined, why: string): boolean {
    if (!this.#everConnected || (code !== undefined && ANSWERS.has(code))) return false;
    const now = this.now();
    if (this.#lostAt === undefined) {
      this.#lostAt = now;
      if (this.policy.timeoutMs > 0) this.policy.note(`lost the connection to ${this.url} (${why}); reconnecting for up to ${duration(Math.ceil(this.policy.timeoutMs / 1000))}`);
    }
    if (now - this.#lostAt >= this.policy.timeoutMs) {
      this.#gaveUp = true;
      return false;
    }
    return true;
  }

  /** graphql-ws' `retryWait`: the backoff before attempt `retries` + 1, never past the deadline. */
  async wait(retries: number): Promise<void> {
    const backoff = Math.min(LONGEST_WAIT_MS, FIRST_WAIT_MS * 2 ** retries);
    const jittered = backoff / 2 + Math.random() * (backoff / 2);
    const left = this.#lostAt === undefined ? jittered : this.#lostAt + this.policy.timeoutMs - this.now();
    await sleep(Math.max(0, Math.min(jittered, left)));
  }

  /** How long it had tried when it gave up, for the error. */
  get timeoutText(): string {
    return duration(Math.ceil(this.policy.timeoutMs / 1000));
  }
}
