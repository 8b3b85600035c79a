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
