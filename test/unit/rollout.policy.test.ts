import { describe, expect, it } from "vitest";
import { FAILURE_CLASSES, type AbortRule, type FailureClass, type RolloutPolicy, type WaveSpec } from "../../src/rollouts/rollout.model.js";
import {
  abortCheck,
  backoffMs,
  checkPolicy,
  checkVersionRange,
  compareVersions,
  estimateDuration,
  inWindow,
  nextWindowStart,
  notifyAllowance,
  retryRuleFor,
  versionGuard,
  waveGate,
  waveOf,
  waveSizes,
} from "../../src/rollouts/rollout.policy.js";

const MINUTE = 60_000;
const DAY = 86_400_000;
/** UTC midnight of 2024-01-15. */
const D = Date.UTC(2024, 0, 15);
const at = (hours: number, minutes: number, seconds = 0) => D + (hours * 60 + minutes) * MINUTE + seconds * 1000;

const pct = (percent: number, soakSeconds = 0, successRatio = 1): WaveSpec => ({ percent, count: null, successRatio, soakSeconds });
const cnt = (count: number, soakSeconds = 0): WaveSpec => ({ percent: null, count, successRatio: 1, soakSeconds });

function failed(partial: Partial<Record<FailureClass, number>>): Record<FailureClass, number> {
  return { ...(Object.fromEntries(FAILURE_CLASSES.map((c) => [c, 0])) as Record<FailureClass, number>), ...partial };
}

describe("comparing firmware versions", () => {
  it("reads partial and v-prefixed versions as semver", () => {
    expect(compareVersions("1.1", "1.1.0")).toBe(0);
    expect(compareVersions("v2", "2.0.0")).toBe(0);
    expect(compareVersions("1.9", "1.10")).toBe(-1);
    expect(compareVersions("1.10.0", "1.9")).toBe(1);
  });

  it("sorts a prerelease before its release and orders prerelease tags", () => {
    expect(compareVersions("2.0.0-rc.1", "2.0.0")).toBe(-1);
    expect(compareVersions("2.0.0", "2.0.0-rc.1")).toBe(1);
    expect(compareVersions("2.0.0-rc.2", "2.0.0-rc.10")).toBe(-1);
    expect(compareVersions("2.0.0-rc.1", "1.9.9")).toBe(1);
  });

  it("coerces the first number found in a non-semver string", () => {
    expect(compareVersions("build-7", "7.0.0")).toBe(0);
    expect(compareVersions("build-7", "2.0")).toBe(1);
  });

  it("ignores build metadata", () => {
    expect(compareVersions("1.0.0+b2", "1.0.0+b1")).toBe(0);
  });

  it("falls back to comparing text when a side holds no version number", () => {
    expect(compareVersions("beta", "alpha")).toBe(1);
    expect(compareVersions("alpha", "beta")).toBe(-1);
    expect(compareVersions("nightly", "nightly")).toBe(0);
    expect(compareVersions("abc", "1.0")).toBe(1);
  });
});

describe("the version guard before notifying a device", () => {
  const open = { allowDowngrade: false, allowedFromVersions: null };

  it("notifies a device on an older version, or one that never reported a version", () => {
    expect(versionGuard("1.0", "2.0", open)).toBeNull();
    expect(versionGuard(null, "2.0", open)).toBeNull();
  });

  it("skips a device already on the target, by string or by version", () => {
    expect(versionGuard("2.0", "2.0", open)).toBe("ALREADY_ON_TARGET");
    expect(versionGuard("2.0.0", "2.0", open)).toBe("ALREADY_ON_TARGET");
    expect(versionGuard("v2", "2.0.0", open)).toBe("ALREADY_ON_TARGET");
    expect(versionGuard("nightly", "nightly", open)).toBe("ALREADY_ON_TARGET");
  });

  it("does not take a prerelease of the target for the target", () => {
    expect(versionGuard("2.0.0-rc.1", "2.0.0", open)).toBeNull();
  });

  it("skips a device on a newer version unless downgrades are allowed", () => {
    expect(versionGuard("3.0", "2.0", open)).toBe("WOULD_DOWNGRADE");
    expect(versionGuard("2.0.0", "2.0.0-rc.1", open)).toBe("WOULD_DOWNGRADE");
    expect(versionGuard("3.0", "2.0", { ...open, allowDowngrade: true })).toBeNull();
  });

  it("matches an exact entry of the allowed list from the partial and the full version", () => {
    const policy = { allowDowngrade: false, allowedFromVersions: ["1.1"] };
    expect(versionGuard("1.1", "2.0", policy)).toBeNull();
    expect(versionGuard("1.1.0", "2.0", policy)).toBeNull();
    expect(versionGuard("1.2.0", "2.0", policy)).toBe("NOT_ALLOWED_FROM_VERSION");
  });

  it("reads a partial entry as a semver X-range, and a full one as that version alone", () => {
    expect(versionGuard("1.1.7", "2.0", { allowDowngrade: false, allowedFromVersions: ["1.1"] })).toBeNull();
    expect(versionGuard("1.1.7", "2.0", { allowDowngrade: false, allowedFromVersions: ["1.1.0"] })).toBe("NOT_ALLOWED_FROM_VERSION");
  });

  it("matches devices within an allowed range, prereleases included", () => {
    const policy = { allowDowngrade: false, allowedFromVersions: [">=1.0.0 <1.5"] };
    expect(versionGuard("1.4.9", "2.0", policy)).toBeNull();
    expect(versionGuard("1.2.0-rc.1", "2.0", policy)).toBeNull();
    expect(versionGuard("1.5.0", "2.0", policy)).toBe("NOT_ALLOWED_FROM_VERSION");
    expect(versionGuard("0.9", "2.0", policy)).toBe("NOT_ALLOWED_FROM_VERSION");
  });

  it("matches a non-semver entry by exact string only", () => {
    const policy = { allowDowngrade: false, allowedFromVersions: ["nightly-42"] };
    expect(versionGuard("nightly-42", "nightly-50", policy)).toBeNull();
    expect(versionGuard("nightly-43", "nightly-50", policy)).toBe("NOT_ALLOWED_FROM_VERSION");
  });

  it("refuses a device that never reported a version when an allowed list is set", () => {
    expect(versionGuard(null, "2.0", { allowDowngrade: false, allowedFromVersions: ["*"] })).toBe("NOT_ALLOWED_FROM_VERSION");
  });

  it("checks already-on-target first, then the allowed list, then downgrades", () => {
    const oneX = { allowDowngrade: false, allowedFromVersions: ["1.x"] };
    expect(versionGuard("2.0", "2.0", oneX)).toBe("ALREADY_ON_TARGET");
    expect(versionGuard("3.0", "2.0", oneX)).toBe("NOT_ALLOWED_FROM_VERSION");
    expect(versionGuard("3.1", "2.0", { allowDowngrade: false, allowedFromVersions: ["3.x"] })).toBe("WOULD_DOWNGRADE");
    expect(versionGuard("3.1", "2.0", { allowDowngrade: true, allowedFromVersions: ["3.x"] })).toBeNull();
  });
});

describe("checking an allowed-from-versions entry", () => {
  it("accepts semver ranges and plain version strings", () => {
    for (const entry of ["1.2.x", ">=1.0.0 <2", "^1.4", "1.1", "nightly-42", "a".repeat(64)]) expect(checkVersionRange(entry), entry).toBe(true);
  });

  it("refuses empty, whitespace-only, overlong and unprintable entries", () => {
    for (const entry of ["", "   ", "a".repeat(65), "1.0\n", "bad\u0000", `${"1.0.0 || ".repeat(30)}1.0.0`]) {
      expect(checkVersionRange(entry), JSON.stringify(entry)).toBe(false);
    }
  });
});

describe("wave sizes", () => {
  it("puts every device in one wave when there are no wave specs", () => {
    expect(waveSizes(7, [])).toEqual([7]);
    expect(waveSizes(0, [])).toEqual([0]);
  });

  it("rounds a percent wave up: 1 % of 200 is 2 devices, 1 % of 50 is 1", () => {
    expect(waveSizes(200, [pct(1), pct(10), pct(100)])).toEqual([2, 18, 180]);
    expect(waveSizes(50, [pct(1), pct(100)])).toEqual([1, 49]);
  });

  it("puts at least one device in a positive percent wave", () => {
    expect(waveSizes(10, [pct(0.1), pct(100)])).toEqual([1, 9]);
    expect(waveSizes(10, [pct(1e-12), pct(100)])).toEqual([1, 9]);
  });

  it("does not round up a decimal percent that comes to whole devices", () => {
    // 250 * 64.4 / 100 is 161.00000000000003 in floating point.
    expect(waveSizes(250, [pct(64.4), pct(100)])).toEqual([161, 89]);
  });

  it("gives the last wave every device left, whatever its spec", () => {
    expect(waveSizes(100, [pct(10), pct(50)])).toEqual([10, 90]);
    expect(waveSizes(10, [pct(50)])).toEqual([10]);
    expect(waveSizes(10, [cnt(2), cnt(3)])).toEqual([2, 8]);
  });

  it("caps count waves at what is left when they run past the total", () => {
    expect(waveSizes(10, [cnt(3), cnt(20), cnt(5)])).toEqual([3, 7, 0]);
    expect(waveSizes(3, [cnt(5), pct(100)])).toEqual([3, 0]);
  });

  it("never takes a percent wave below what earlier waves reached", () => {
    expect(waveSizes(10, [cnt(3), pct(10), pct(100)])).toEqual([3, 0, 7]);
  });

  it("gives empty waves when there are no devices", () => {
    expect(waveSizes(0, [pct(1), cnt(5), pct(100)])).toEqual([0, 0, 0]);
  });
});

describe("the wave of a device", () => {
  it("assigns devices to waves in order, skipping empty waves", () => {
    const sizes = [2, 0, 3];
    expect([0, 1, 2, 3, 4].map((i) => waveOf(i, sizes))).toEqual([0, 0, 2, 2, 2]);
  });

  it("puts a device past the total in the last wave", () => {
    expect(waveOf(5, [2, 0, 3])).toBe(2);
    expect(waveOf(100, [1, 1])).toBe(1);
  });
});

describe("the gate to the next wave", () => {
  const T = at(12, 0);
  const spec = { successRatio: 0.9, soakSeconds: 600 };

  it("stays shut while the success ratio is not reached", () => {
    expect(waveGate({ succeeded: 8, eligible: 10, final: 8 }, spec, null, T)).toEqual({ open: false, readyAt: null, unreachable: false });
  });

  it("starts the soak when the ratio is first reached and opens when it has passed", () => {
    const wave = { succeeded: 9, eligible: 10, final: 10 };
    expect(waveGate(wave, spec, null, T)).toEqual({ open: false, readyAt: T, unreachable: false });
    expect(waveGate(wave, spec, T, T + 600_000 - 1)).toEqual({ open: false, readyAt: T, unreachable: false });
    expect(waveGate(wave, spec, T, T + 600_000)).toEqual({ open: true, readyAt: T });
  });

  it("opens at once with no soak, and counts a ratio reached exactly", () => {
    expect(waveGate({ succeeded: 7, eligible: 10, final: 7 }, { successRatio: 0.7, soakSeconds: 0 }, null, T)).toEqual({ open: true, readyAt: T });
  });

  it("opens a wave with no eligible execution", () => {
    expect(waveGate({ succeeded: 0, eligible: 0, final: 0 }, spec, null, T)).toEqual({ open: false, readyAt: T, unreachable: false });
    expect(waveGate({ succeeded: 0, eligible: 0, final: 0 }, { successRatio: 1, soakSeconds: 0 }, null, T)).toEqual({ open: true, readyAt: T });
  });

  it("keeps the first time the ratio was reached if it falls back", () => {
    expect(waveGate({ succeeded: 9, eligible: 11, final: 9 }, spec, T - 1000, T)).toEqual({ open: false, readyAt: T - 1000, unreachable: false });
  });

  it("says the ratio is unreachable only when even every running execution succeeding would not reach it", () => {
    expect(waveGate({ succeeded: 8, eligible: 10, final: 9 }, spec, null, T)).toEqual({ open: false, readyAt: null, unreachable: false });
    expect(waveGate({ succeeded: 8, eligible: 10, final: 10 }, spec, null, T)).toEqual({ open: false, readyAt: null, unreachable: true });
  });
});

describe("abort rules", () => {
  const rule: AbortRule = { failureClass: "INSTALL_FAILED", thresholdPercent: 5, minFinished: 100 };

  it("does not fire at exactly the threshold, and fires above it", () => {
    expect(abortCheck({ finished: 100, failedByClass: failed({ INSTALL_FAILED: 5 }) }, [rule])).toBeNull();
    expect(abortCheck({ finished: 100, failedByClass: failed({ INSTALL_FAILED: 6 }) }, [rule])).toEqual({ rule, failed: 6, finished: 100 });
  });

  it("does not fire at exactly a decimal threshold that floating point rounds", () => {
    // 18.4 * 375 is 6900.000000000001 in floating point: 69 of 375 is exactly 18.4 %.
    const decimal: AbortRule = { failureClass: "OTHER", thresholdPercent: 18.4, minFinished: 1 };
    expect(abortCheck({ finished: 375, failedByClass: failed({ OTHER: 69 }) }, [decimal])).toBeNull();
    expect(abortCheck({ finished: 375, failedByClass: failed({ OTHER: 70 }) }, [decimal])).not.toBeNull();
  });

  it("does not fire before minFinished executions finished", () => {
    expect(abortCheck({ finished: 99, failedByClass: failed({ INSTALL_FAILED: 99 }) }, [rule])).toBeNull();
  });

  it("counts only failures of the rule's class", () => {
    expect(abortCheck({ finished: 100, failedByClass: failed({ DOWNLOAD_FAILED: 50, INSTALL_FAILED: 1 }) }, [rule])).toBeNull();
  });

  it("returns the first rule that fires", () => {
    const download: AbortRule = { failureClass: "DOWNLOAD_FAILED", thresholdPercent: 10, minFinished: 10 };
    const any: AbortRule = { failureClass: "INSTALL_FAILED", thresholdPercent: 0, minFinished: 1 };
    const counts = { finished: 100, failedByClass: failed({ DOWNLOAD_FAILED: 20, INSTALL_FAILED: 20 }) };
    expect(abortCheck(counts, [rule, download, any])?.rule).toBe(rule);
    expect(abortCheck(counts, [download, any])?.rule).toBe(download);
    expect(abortCheck(counts, [])).toBeNull();
  });
});

describe("retries", () => {
  const rules = [
    { failureClass: "DOWNLOAD_FAILED" as const, maxAttempts: 3, backoffSeconds: 30, maxBackoffSeconds: 3600 },
    { failureClass: "TIMED_OUT" as const, maxAttempts: 2, backoffSeconds: 60, maxBackoffSeconds: 60 },
  ];

  it("finds the rule of a failure class, or none", () => {
    expect(retryRuleFor(rules, "TIMED_OUT")).toBe(rules[1]);
    expect(retryRuleFor(rules, "DOWNLOAD_FAILED")).toBe(rules[0]);
    expect(retryRuleFor(rules, "MD5_MISMATCH")).toBeNull();
  });

  it("doubles the backoff with each failed attempt", () => {
    expect([1, 2, 3, 4].map((n) => backoffMs(rules[0]!, n))).toEqual([30_000, 60_000, 120_000, 240_000]);
  });

  it("caps the backoff at maxBackoffSeconds", () => {
    expect(backoffMs(rules[0]!, 7)).toBe(1_920_000);
    expect(backoffMs(rules[0]!, 8)).toBe(3_600_000);
  });

  it("stays finite and capped for huge attempt counts", () => {
    for (const n of [1_100, 1e9, Infinity, Number.NaN]) expect(backoffMs(rules[0]!, n)).toBe(3_600_000);
  });

  it("reads fewer than one failed attempt as one", () => {
    expect(backoffMs(rules[0]!, 0)).toBe(30_000);
  });
});

describe("the maintenance window", () => {
  const night = { startMinute: 22 * 60, endMinute: 2 * 60 };
  const oneToTwo = { startMinute: 60, endMinute: 120 };

  it("is always open with no window, or one whose start equals its end", () => {
    expect(inWindow(null, at(13, 37))).toBe(true);
    for (const t of [at(0, 0), at(5, 0), at(5, 1), at(23, 59)]) expect(inWindow({ startMinute: 300, endMinute: 300 }, t)).toBe(true);
  });

  it("includes its start minute and excludes its end minute", () => {
    expect([at(0, 59, 59), at(1, 0), at(1, 59, 59), at(2, 0)].map((t) => inWindow(oneToTwo, t))).toEqual([false, true, true, false]);
  });

  it("spans midnight when the end is before the start", () => {
    expect([at(21, 59), at(22, 0), at(23, 30), at(0, 0), at(1, 59), at(2, 0), at(12, 0)].map((t) => inWindow(night, t))).toEqual([
      false,
      true,
      true,
      true,
      true,
      false,
      false,
    ]);
  });

  it("reads the time of day in UTC on any day", () => {
    expect(inWindow(oneToTwo, at(1, 30) + 40 * DAY)).toBe(true);
    expect(inWindow(oneToTwo, at(1, 30) - 400 * DAY)).toBe(true);
  });

  it("opens next at now when inside, later today, or tomorrow", () => {
    expect(nextWindowStart(null, at(12, 0))).toBe(at(12, 0));
    expect(nextWindowStart(oneToTwo, at(1, 30))).toBe(at(1, 30));
    expect(nextWindowStart(oneToTwo, at(0, 59, 30))).toBe(at(1, 0));
    expect(nextWindowStart(oneToTwo, at(2, 0))).toBe(at(1, 0) + DAY);
    expect(nextWindowStart(night, at(12, 0))).toBe(at(22, 0));
    expect(nextWindowStart(night, at(1, 0))).toBe(at(1, 0));
  });
});

describe("how many devices may be notified now", () => {
  it("is unbounded with no bound", () => {
    expect(notifyAllowance({ maxInProgress: null, maxPerMinute: null }, 1000, 1000)).toBe(Infinity);
  });

  it("is the room under each bound, the smaller of the two", () => {
    expect(notifyAllowance({ maxInProgress: 10, maxPerMinute: null }, 4, 1000)).toBe(6);
    expect(notifyAllowance({ maxInProgress: null, maxPerMinute: 100 }, 1000, 95)).toBe(5);
    expect(notifyAllowance({ maxInProgress: 10, maxPerMinute: 100 }, 4, 97)).toBe(3);
    expect(notifyAllowance({ maxInProgress: 10, maxPerMinute: 100 }, 8, 0)).toBe(2);
  });

  it("is never below zero", () => {
    expect(notifyAllowance({ maxInProgress: 10, maxPerMinute: 100 }, 12, 0)).toBe(0);
    expect(notifyAllowance({ maxInProgress: null, maxPerMinute: 100 }, 0, 150)).toBe(0);
  });
});

describe("the dry-run estimate", () => {
  const base: Pick<RolloutPolicy, "maxInProgress" | "maxPerMinute" | "waves" | "inProgressTimeoutSeconds" | "startAt" | "maintenanceWindow"> = {
    maxInProgress: null,
    maxPerMinute: null,
    waves: [],
    inProgressTimeoutSeconds: 3600,
    startAt: null,
    maintenanceWindow: null,
  };
  const T = at(12, 0);

  it("adds the rate bound and every soak but the last wave's for the minimum, and the timeouts per wave for the worst case", () => {
    const waves = [pct(1, 600), pct(10, 1200), pct(100, 99_999)];
    const policy = { ...base, waves, maxInProgress: 10, maxPerMinute: 50 };
    const sizes = waveSizes(200, waves);
    // Rate: 200 devices at 50 a minute: 4 batches, 3 minutes apart from the first.
    // Worst: ceil(2/10) + ceil(18/10) + ceil(180/10) = 21 timeouts, plus 1800 s of soak.
    expect(estimateDuration(sizes, policy, T)).toEqual({ startsAt: T, minimumSeconds: 180 + 1800, worstCaseSeconds: 21 * 3600 + 1800 });
  });

  it("takes the rate bound for a wave's worst case when it is longer than the timeouts", () => {
    const policy = { ...base, maxPerMinute: 10, inProgressTimeoutSeconds: 60 };
    expect(estimateDuration([1000], policy, T)).toEqual({ startsAt: T, minimumSeconds: 99 * 60, worstCaseSeconds: 99 * 60 });
  });

  it("is one timeout at worst and nothing at least with no bound", () => {
    expect(estimateDuration([5], base, T)).toEqual({ startsAt: T, minimumSeconds: 0, worstCaseSeconds: 3600 });
    expect(estimateDuration([0], { ...base, maxPerMinute: 10 }, T)).toEqual({ startsAt: T, minimumSeconds: 0, worstCaseSeconds: 0 });
  });

  it("counts nothing for an empty wave", () => {
    const waves = [cnt(5), pct(100)];
    expect(estimateDuration([3, 0], { ...base, waves }, T).worstCaseSeconds).toBe(3600);
  });

  it("starts at the later of now and startAt, moved into the maintenance window", () => {
    expect(estimateDuration([1], { ...base, startAt: T + 5000 }, T).startsAt).toBe(T + 5000);
    expect(estimateDuration([1], { ...base, startAt: T - 5000 }, T).startsAt).toBe(T);
    expect(estimateDuration([1], { ...base, maintenanceWindow: { startMinute: 60, endMinute: 120 } }, T).startsAt).toBe(at(1, 0) + DAY);
    expect(estimateDuration([1], { ...base, startAt: at(1, 30) + DAY, maintenanceWindow: { startMinute: 60, endMinute: 120 } }, T).startsAt).toBe(
      at(1, 30) + DAY,
    );
  });
});

describe("checking a rollout policy", () => {
  const defaults: RolloutPolicy = {
    maxInProgress: null,
    maxPerMinute: null,
    waves: [],
    abortRules: [],
    retries: [],
    inProgressTimeoutSeconds: 3600,
    allowDowngrade: false,
    allowedFromVersions: null,
    startAt: null,
    maintenanceWindow: null,
  };

  function reasonOf(input: unknown): string | null {
    const result = checkPolicy(input);
    if (result.ok) return null;
    expect(result.message).toMatch(/^[A-Za-z].*\.$/);
    return result.reason;
  }

  it("fills every default, for an empty, null or absent policy and for null fields", () => {
    expect(checkPolicy({})).toEqual({ ok: true, value: defaults });
    expect(checkPolicy(undefined)).toEqual({ ok: true, value: defaults });
    expect(checkPolicy(null)).toEqual({ ok: true, value: defaults });
    const nulls = Object.fromEntries(Object.keys(defaults).map((k) => [k, null]));
    expect(checkPolicy(nulls)).toEqual({ ok: true, value: defaults });
  });

  it("fills the defaults of waves and retry rules", () => {
    const result = checkPolicy({
      waves: [{ percent: 10 }, { count: 5, successRatio: 0.5, soakSeconds: 60 }],
      retries: [
        { failureClass: "OTHER", maxAttempts: 3, backoffSeconds: 30 },
        { failureClass: "TIMED_OUT", maxAttempts: 3, backoffSeconds: 7200 },
      ],
    });
    expect(result).toEqual({
      ok: true,
      value: {
        ...defaults,
        waves: [
          { percent: 10, count: null, successRatio: 1, soakSeconds: 0 },
          { percent: null, count: 5, successRatio: 0.5, soakSeconds: 60 },
        ],
        retries: [
          { failureClass: "OTHER", maxAttempts: 3, backoffSeconds: 30, maxBackoffSeconds: 3600 },
          // A default cap below the base pause would refuse the rule: it is the base pause then.
          { failureClass: "TIMED_OUT", maxAttempts: 3, backoffSeconds: 7200, maxBackoffSeconds: 7200 },
        ],
      },
    });
  });

  it("keeps a full valid policy as given", () => {
    const policy: RolloutPolicy = {
      maxInProgress: 1_000_000,
      maxPerMinute: 1,
      waves: [pct(1, 30 * 86_400, 0), cnt(100), pct(100, 0, 1)],
      abortRules: [{ failureClass: "MD5_MISMATCH", thresholdPercent: 100, minFinished: 1_000_000 }],
      retries: [{ failureClass: "DOWNLOAD_FAILED", maxAttempts: 20, backoffSeconds: 86_400, maxBackoffSeconds: 7 * 86_400 }],
      inProgressTimeoutSeconds: 10,
      allowDowngrade: true,
      allowedFromVersions: ["1.x", "nightly-42"],
      startAt: D,
      maintenanceWindow: { startMinute: 1439, endMinute: 0 },
    };
    expect(checkPolicy(policy)).toEqual({ ok: true, value: policy });
  });

  it("names the input itself when it is not an object", () => {
    expect(reasonOf("fast")).toBe("policy");
    expect(reasonOf([])).toBe("policy");
  });

  it("refuses unknown fields, naming them", () => {
    expect(reasonOf({ maxPerMinutes: 5 })).toBe("policy.maxPerMinutes");
    expect(reasonOf({ waves: [{ percent: 10, soak: 5 }] })).toBe("policy.waves.0.soak");
  });

  it("bounds maxInProgress and maxPerMinute to whole numbers from 1 to 1,000,000", () => {
    expect(reasonOf({ maxInProgress: 0 })).toBe("policy.maxInProgress");
    expect(reasonOf({ maxInProgress: 1.5 })).toBe("policy.maxInProgress");
    expect(reasonOf({ maxInProgress: 1_000_001 })).toBe("policy.maxInProgress");
    expect(reasonOf({ maxPerMinute: 0 })).toBe("policy.maxPerMinute");
    expect(reasonOf({ maxPerMinute: "10" })).toBe("policy.maxPerMinute");
    expect(reasonOf({ maxInProgress: 1, maxPerMinute: 1_000_000 })).toBeNull();
  });

  it("requires exactly one of percent and count in a wave", () => {
    expect(reasonOf({ waves: [{ percent: 10 }, {}] })).toBe("policy.waves.1");
    expect(reasonOf({ waves: [{ percent: 10, count: 3 }] })).toBe("policy.waves.0");
  });

  it("bounds a wave's percent above 0 up to 100, and its count to whole numbers from 1", () => {
    expect(reasonOf({ waves: [{ percent: 0 }] })).toBe("policy.waves.0.percent");
    expect(reasonOf({ waves: [{ percent: 100.5 }] })).toBe("policy.waves.0.percent");
    expect(reasonOf({ waves: [{ percent: 0.1 }, { percent: 100 }] })).toBeNull();
    expect(reasonOf({ waves: [{ count: 0 }] })).toBe("policy.waves.0.count");
    expect(reasonOf({ waves: [{ count: 2.5 }] })).toBe("policy.waves.0.count");
  });

  it("requires percent waves to increase strictly, count waves aside", () => {
    expect(reasonOf({ waves: [{ percent: 10 }, { count: 5 }, { percent: 20 }] })).toBeNull();
    expect(reasonOf({ waves: [{ percent: 10 }, { count: 5 }, { percent: 10 }] })).toBe("policy.waves.2.percent");
    expect(reasonOf({ waves: [{ percent: 50 }, { percent: 5 }] })).toBe("policy.waves.1.percent");
  });

  it("bounds successRatio to 0..1 and soakSeconds to 30 days", () => {
    expect(reasonOf({ waves: [{ count: 1, successRatio: 1.01 }] })).toBe("policy.waves.0.successRatio");
    expect(reasonOf({ waves: [{ count: 1, successRatio: -0.1 }] })).toBe("policy.waves.0.successRatio");
    expect(reasonOf({ waves: [{ count: 1, soakSeconds: 30 * 86_400 + 1 }] })).toBe("policy.waves.0.soakSeconds");
    expect(reasonOf({ waves: [{ count: 1, soakSeconds: -1 }] })).toBe("policy.waves.0.soakSeconds");
  });

  it("allows at most 20 waves, abort rules and retry rules", () => {
    const waves = Array.from({ length: 20 }, (_, i) => ({ percent: (i + 1) * 5 }));
    expect(reasonOf({ waves })).toBeNull();
    expect(reasonOf({ waves: [...waves, { count: 1 }] })).toBe("policy.waves");
    const abortRules = Array.from({ length: 21 }, () => ({ failureClass: "OTHER", thresholdPercent: 5, minFinished: 10 }));
    expect(reasonOf({ abortRules: abortRules.slice(1) })).toBeNull();
    expect(reasonOf({ abortRules })).toBe("policy.abortRules");
    const retries = Array.from({ length: 21 }, () => ({ failureClass: "OTHER", maxAttempts: 2, backoffSeconds: 1 }));
    expect(reasonOf({ retries })).toBe("policy.retries");
  });

  it("bounds abort rules and requires their fields", () => {
    const ok = { failureClass: "OTHER", thresholdPercent: 5, minFinished: 10 };
    expect(reasonOf({ abortRules: [ok] })).toBeNull();
    expect(reasonOf({ abortRules: [{ ...ok, failureClass: "EXPLODED" }] })).toBe("policy.abortRules.0.failureClass");
    expect(reasonOf({ abortRules: [{ ...ok, thresholdPercent: 100.1 }] })).toBe("policy.abortRules.0.thresholdPercent");
    expect(reasonOf({ abortRules: [{ ...ok, thresholdPercent: -1 }] })).toBe("policy.abortRules.0.thresholdPercent");
    expect(reasonOf({ abortRules: [{ ...ok, minFinished: 0 }] })).toBe("policy.abortRules.0.minFinished");
    expect(reasonOf({ abortRules: [{ ...ok, minFinished: 1_000_001 }] })).toBe("policy.abortRules.0.minFinished");
    expect(reasonOf({ abortRules: [{ failureClass: "OTHER", minFinished: 10 }] })).toBe("policy.abortRules.0.thresholdPercent");
    expect(checkPolicy({ abortRules: [{ failureClass: "OTHER", minFinished: 10 }] })).toMatchObject({ message: expect.stringContaining("required") });
  });

  it("bounds retry rules and allows one per failure class", () => {
    const ok = { failureClass: "DOWNLOAD_FAILED", maxAttempts: 3, backoffSeconds: 30 };
    expect(reasonOf({ retries: [{ ...ok, maxAttempts: 1 }] })).toBe("policy.retries.0.maxAttempts");
    expect(reasonOf({ retries: [{ ...ok, maxAttempts: 21 }] })).toBe("policy.retries.0.maxAttempts");
    expect(reasonOf({ retries: [{ ...ok, maxAttempts: 2 }] })).toBeNull();
    expect(reasonOf({ retries: [{ ...ok, backoffSeconds: 0 }] })).toBe("policy.retries.0.backoffSeconds");
    expect(reasonOf({ retries: [{ ...ok, backoffSeconds: 86_401 }] })).toBe("policy.retries.0.backoffSeconds");
    expect(reasonOf({ retries: [{ ...ok, maxBackoffSeconds: 29 }] })).toBe("policy.retries.0.maxBackoffSeconds");
    expect(reasonOf({ retries: [{ ...ok, maxBackoffSeconds: 30 }] })).toBeNull();
    expect(reasonOf({ retries: [{ ...ok, maxBackoffSeconds: 7 * 86_400 + 1 }] })).toBe("policy.retries.0.maxBackoffSeconds");
    expect(reasonOf({ retries: [ok, { ...ok, failureClass: "OTHER" }] })).toBeNull();
    expect(reasonOf({ retries: [ok, { ...ok, backoffSeconds: 60 }] })).toBe("policy.retries.1.failureClass");
  });

  it("bounds the in-progress timeout from 10 seconds to 30 days", () => {
    expect(reasonOf({ inProgressTimeoutSeconds: 9 })).toBe("policy.inProgressTimeoutSeconds");
    expect(reasonOf({ inProgressTimeoutSeconds: 30 * 86_400 + 1 })).toBe("policy.inProgressTimeoutSeconds");
    expect(reasonOf({ inProgressTimeoutSeconds: 30 * 86_400 })).toBeNull();
  });

  it("requires 1 to 20 usable allowed-from-versions entries of at most 64 characters (each is parsed once per plan, however many devices)", () => {
    expect(reasonOf({ allowedFromVersions: [] })).toBe("policy.allowedFromVersions");
    expect(reasonOf({ allowedFromVersions: Array.from({ length: 21 }, (_, i) => `1.${i}.0`) })).toBe("policy.allowedFromVersions");
    expect(reasonOf({ allowedFromVersions: Array.from({ length: 20 }, (_, i) => `1.${i}.0`) })).toBeNull();
    expect(reasonOf({ allowedFromVersions: [Array.from({ length: 13 }, (_, i) => `^${i}.0`).join(" || ")] })).toBe("policy.allowedFromVersions.0");
    expect(reasonOf({ allowedFromVersions: ["1.x", "  "] })).toBe("policy.allowedFromVersions.1");
    expect(reasonOf({ allowedFromVersions: [12] })).toBe("policy.allowedFromVersions.0");
  });

  it("requires a whole number of seconds for the in-progress timeout", () => {
    expect(reasonOf({ inProgressTimeoutSeconds: 10.5 })).toBe("policy.inProgressTimeoutSeconds");
  });

  it("requires startAt to be a finite time and allowDowngrade a boolean", () => {
    expect(reasonOf({ startAt: Infinity })).toBe("policy.startAt");
    expect(reasonOf({ startAt: Number.NaN })).toBe("policy.startAt");
    expect(reasonOf({ startAt: "2024-01-15" })).toBe("policy.startAt");
    expect(reasonOf({ allowDowngrade: "yes" })).toBe("policy.allowDowngrade");
  });

  it("requires window minutes to be whole minutes of the day", () => {
    expect(reasonOf({ maintenanceWindow: { startMinute: 1440, endMinute: 0 } })).toBe("policy.maintenanceWindow.startMinute");
    expect(reasonOf({ maintenanceWindow: { startMinute: 0, endMinute: -1 } })).toBe("policy.maintenanceWindow.endMinute");
    expect(reasonOf({ maintenanceWindow: { startMinute: 0.5, endMinute: 60 } })).toBe("policy.maintenanceWindow.startMinute");
    expect(reasonOf({ maintenanceWindow: { startMinute: 60 } })).toBe("policy.maintenanceWindow.endMinute");
  });
});
