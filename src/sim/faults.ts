/** Fault injection, as percentages of upgrades (0..100 each). */
export interface FaultRates {
  /** Report -1 (download failed) instead of downloading. */
  downloadError: number;
  /** Corrupt the computed md5, so the check fails: -2. */
  md5Mismatch: number;
  /** Report -3 after "installing". */
  installError: number;
  /** Install, reboot, and report the old version: a silent rollback. */
  rollback: number;
  /** Drop the connection mid-download, come back and download again. */
  offline: number;
  /** Publish a report twice with the same messageId, as QoS 1 may. */
  duplicate: number;
}

export const NO_FAULTS: FaultRates = { downloadError: 0, md5Mismatch: 0, installError: 0, rollback: 0, offline: 0, duplicate: 0 };

export type Fault = keyof FaultRates;

/** The `simulate` flag of each fault, for the command line and its error messages. */
export const FAULT_FLAGS: Record<Fault, string> = {
  downloadError: "fail-download",
  md5Mismatch: "fail-md5",
  installError: "fail-install",
  rollback: "rollback",
  offline: "offline",
  duplicate: "duplicate",
};

/** A small seeded PRNG (mulberry32), so a run with a seed injects the same faults. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Which faults one upgrade will suffer, drawn once at its start. */
export function drawFaults(rates: FaultRates, random: () => number): Set<Fault> {
  const faults = new Set<Fault>();
  for (const fault of Object.keys(rates) as Fault[]) {
    if (random() * 100 < rates[fault]) faults.add(fault);
  }
  return faults;
}

export function checkRates(rates: Partial<Record<string, unknown>>): FaultRates {
  const out = { ...NO_FAULTS };
  for (const key of Object.keys(NO_FAULTS) as Fault[]) {
    const v = rates[key];
    if (v === undefined) continue;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0 || n > 100) throw new Error(`--${FAULT_FLAGS[key]} must be a percentage 0..100, got ${String(v)}`);
    out[key] = n;
  }
  return out;
}
