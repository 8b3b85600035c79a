import { rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";

type Teardown = () => Promise<unknown> | unknown;

const stack: Teardown[] = [];

/** Registers something to undo after the current file's tests, last registered first. */
export function onTeardown(fn: Teardown): void {
  stack.push(fn);
}

export async function runTeardown(): Promise<void> {
  for (let fn = stack.pop(); fn; fn = stack.pop()) {
    try {
      await fn();
    } catch (err) {
      console.error("teardown failed", err);
    }
  }
}

/** A fresh folder path under /tmp, removed (with whatever was put there) after the file's tests. */
export function tempDir(prefix: string): string {
  const dir = `/tmp/iothub-ota-${prefix}-${randomBytes(4).toString("hex")}`;
  onTeardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
