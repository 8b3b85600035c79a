import { useEffect, useRef, useState } from "react";
import { useClient, type AnyVariables, type TypedDocumentNode, type CombinedError } from "urql";
import { DashProgressBatchesDocument, type DashProgressBatchesSubscription } from "../../src/client/generated/graphql.js";

/** How often buffered live updates reach the screen: at most four renders a second, whatever the report rate. */
export const FLUSH_MS = 250;

/**
 * A subscription whose events are buffered per key (the latest wins) and applied
 * at most every {@link FLUSH_MS}, only for the keys on screen: at 10,000 devices
 * reporting, the page renders four times a second and only for its own rows.
 * `pick` takes an event's entries (one report, or a batch of them).
 */
export function useCoalescedSubscription<T, V extends AnyVariables, K, R>(
  doc: TypedDocumentNode<T, V>,
  variables: V | null,
  pick: (data: T) => Iterable<readonly [key: K, value: R]>,
  onScreen: ReadonlySet<K>,
): { latest: ReadonlyMap<K, R>; error: CombinedError | undefined } {
  const client = useClient();
  const [latest, setLatest] = useState<ReadonlyMap<K, R>>(() => new Map());
  const [error, setError] = useState<CombinedError>();
  const screen = useRef(onScreen);
  screen.current = onScreen;
  const pickRef = useRef(pick);
  pickRef.current = pick;
  const key = variables === null ? null : JSON.stringify(variables);

  useEffect(() => {
    if (variables === null) return;
    const buffer = new Map<K, R>();
    setLatest(new Map());
    setError(undefined);
    const { unsubscribe } = client.subscription(doc, variables).subscribe((result) => {
      if (result.error) return setError(result.error);
      if (!result.data) return;
      for (const [k, v] of pickRef.current(result.data)) if (screen.current.has(k)) buffer.set(k, v);
    });
    const timer = setInterval(() => {
      if (buffer.size === 0) return;
      const batch = [...buffer];
      buffer.clear();
      setLatest((prev) => {
        const next = new Map(prev);
        for (const [k, v] of batch) next.set(k, v);
        return next;
      });
    }, FLUSH_MS);
    return () => {
      clearInterval(timer);
      unsubscribe();
    };
    // `key` stands for `variables`' content.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, doc, key]);

  return { latest, error };
}

export type BatchedProgress = DashProgressBatchesSubscription["otaProgressBatches"]["reports"][number];

const batchEntries = (d: DashProgressBatchesSubscription) => d.otaProgressBatches.reports.map((r) => [r.deviceName, r] as const);

/**
 * The live progress of the devices on screen, from `otaProgressBatches`: the
 * server sends the latest report of each of those devices (`deviceNames`)
 * once per {@link FLUSH_MS}, one message whatever the number of devices
 * reporting. `filter` null, or no rows: not subscribed. The subscription is
 * renewed when the rows on screen are other devices, not when the same rows
 * are read again.
 */
export function useProgressBatches(
  filter: { productName: string; tag?: string | null; rolloutId?: string | null } | null,
  onScreen: ReadonlySet<string>,
): { latest: ReadonlyMap<string, BatchedProgress>; error: CombinedError | undefined } {
  const deviceNames = [...onScreen].sort();
  const variables = filter && deviceNames.length > 0 ? { ...filter, deviceNames, intervalMs: FLUSH_MS } : null;
  return useCoalescedSubscription(DashProgressBatchesDocument, variables, batchEntries, onScreen);
}

/** Calls `tick` every `ms` while `active`; for re-reading what no subscription pushes. */
export function useInterval(tick: () => void, ms: number, active = true): void {
  const ref = useRef(tick);
  ref.current = tick;
  useEffect(() => {
    if (!active) return;
    const timer = setInterval(() => ref.current(), ms);
    return () => clearInterval(timer);
  }, [ms, active]);
}

/**
 * Calls `run` after `key` changes, at most once every `ms`, and always once
 * after the last change (trailing): what a page reads again when a pushed
 * summary says its rows changed.
 */
export function useThrottledOnChange(key: string, run: () => void, ms: number): void {
  const ref = useRef(run);
  ref.current = run;
  const last = useRef(0);
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    const wait = Math.max(0, last.current + ms - Date.now());
    const timer = setTimeout(() => {
      last.current = Date.now();
      ref.current();
    }, wait);
    return () => clearTimeout(timer);
  }, [key, ms]);
}
