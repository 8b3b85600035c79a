import type { Logger } from "../logger.js";
import type { RolloutRepository } from "./rollout.repository.js";
import type { RolloutService } from "./rollout.service.js";

export interface SchedulerOptions {
  /** Pause between passes over the active rollouts. */
  intervalMs: number;
  log: Logger;
}

/** Rollouts one pass drives at once. */
const CONCURRENCY = 4;

/**
 * Drives every active rollout: a pass every `intervalMs` (and at once when
 * woken), each rollout ticked under its row lock so that instances share
 * the work without doing any of it twice. A failing pass is logged and the
 * next one tries again: the state is all in PostgreSQL.
 */
export class RolloutScheduler {
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<void> | undefined;
  #running = false;
  #again = false;
  #failures = 0;

  constructor(
    private readonly service: RolloutService,
    private readonly repo: RolloutRepository,
    private readonly options: SchedulerOptions,
  ) {}

  async start(): Promise<void> {
    this.#running = true;
    this.wake();
  }

  /** Runs a pass now (or right after the one under way). */
  wake(): void {
    if (!this.#running) return;
    if (this.#pass) {
      this.#again = true;
      return;
    }
    clearTimeout(this.#timer);
    this.#pass = this.#runPass().finally(() => {
      this.#pass = undefined;
      if (!this.#running) return;
      if (this.#again) {
        this.#again = false;
        this.wake();
      } else {
        this.#timer = setTimeout(() => this.wake(), this.options.intervalMs);
      }
    });
  }

  async stop(): Promise<void> {
    this.#running = false;
    clearTimeout(this.#timer);
    await this.#pass;
  }

  async #runPass(): Promise<void> {
    try {
      const ids = await this.repo.activeIds();
      const queue = [...ids];
      const worker = async () => {
        for (let id = queue.shift(); id !== undefined && this.#running; id = queue.shift()) await this.service.tick(id);
      };
      await Promise.all(Array.from({ length: Math.min(CONCURRENCY, queue.length) }, worker));
      this.#failures = 0;
    } catch (err) {
      // Throttled: a database outage fails every pass until it is back.
      if (this.#failures++ % 60 === 0) this.options.log.error({ err, failures: this.#failures }, "rollout scheduler pass failed; trying again");
    }
  }
}
