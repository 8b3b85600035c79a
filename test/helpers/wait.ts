/** A queue of things that arrive asynchronously, awaited one at a time with a deadline. */
export class Inbox<T> {
  readonly #items: T[] = [];
  readonly #waiters: { accept: (item: T) => boolean; resolve: (item: T) => void }[] = [];

  push(item: T): void {
    const i = this.#waiters.findIndex((w) => w.accept(item));
    if (i >= 0) {
      const [w] = this.#waiters.splice(i, 1);
      w?.resolve(item);
    } else {
      this.#items.push(item);
    }
  }

  /** Everything received and not yet taken. */
  get pending(): readonly T[] {
    return this.#items;
  }

  /** The first item (received or to come) that matches, or a rejection after `ms`. */
  next(accept: (item: T) => boolean = () => true, ms = 10_000): Promise<T> {
    const i = this.#items.findIndex(accept);
    if (i >= 0) return Promise.resolve(this.#items.splice(i, 1)[0] as T);
    return new Promise((resolve, reject) => {
      const waiter = {
        accept,
        resolve: (item: T) => {
          clearTimeout(timer);
          resolve(item);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`nothing matching arrived within ${ms} ms`));
      }, ms);
      this.#waiters.push(waiter);
    });
  }
}

/** Retries `check` until it stops throwing, or rethrows its last error after `ms`. */
export async function eventually<T>(check: () => Promise<T> | T, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
