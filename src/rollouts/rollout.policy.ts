/**
 * The pure arithmetic of staged rollouts: version guards, wave sizes and
 * gates, abort rules, retry backoff, maintenance windows, rate bounds and the
 * dry-run estimate, plus validation of an operator's policy input.
 *
 * Nothing here does I/O or reads the clock: time is always a parameter, in
 * Unix milliseconds (UTC).
 */
import semver, { type SemVer } from "semver";
import { z } from "zod";
import { fail, ok, type Result } from "../protocol/result.js";
import { FAILURE_CLASSES, type AbortRule, type FailureClass, type MaintenanceWindow, type RetryRule, type RolloutPolicy, type WaveSpec } from "./rollout.model.js";

const MINUTE_MS = 60_000;
const DAY_MS = 86_400_000;
const DAY_SECONDS = 86_400;

// Decimal percents (64.4 % of 250 = 161 exactly) come out of binary floating
// point a hair above or below the integer they denote; compare with a margin
// far below any real difference of whole devices.
const EPSILON = 1e-9;

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

/**
 * A firmware version as semver: the string itself when it is valid (loose)
 * semver, so prerelease tags survive ("2.0.0-rc.1"), else `semver.coerce`'s
 * reading ("1.1" → 1.1.0, "v2" → 2.0.0, "build-7" → 7.0.0); null when no
 * number can be found in it.
 */
function toSemver(version: string): SemVer | null {
  return semver.parse(version, { loose: true }) ?? semver.coerce(version, { loose: true });
}

/**
 * Orders two firmware versions: -1 when `a` is older than `b`, 0 when they
 * are the same version, 1 when `a` is newer.
 *
 * Both are read as semantic versions, loosely: "1.1" is 1.1.0, "v2" is 2.0.0,
 * and a prerelease sorts before its release ("2.0.0-rc.1" < "2.0.0"). Build
 * metadata is ignored ("1.0.0+b1" equals "1.0.0").
 *
 * Fallback: when either side holds no version number at all ("abc",
 * "nightly"), the two strings are compared as text with numeric runs compared
 * as numbers (`localeCompare` with `numeric: true`), so "r9" < "r10".
 */
export function compareVersions(a: string, b: string): number {
  const va = toSemver(a);
  const vb = toSemver(b);
  if (va === null || vb === null) return Math.sign(a.localeCompare(b, undefined, { numeric: true }));
  return semver.compare(va, vb);
}

/**
 * The entries of one `allowedFromVersions` list, each parsed once (null: not
 * a range), however many devices are checked against it: a plan over a whole
 * fleet would otherwise parse every entry for every device.
 */
const parsedRanges = new WeakMap<readonly string[], (semver.Range | null)[]>();
function rangesOf(entries: readonly string[]): (semver.Range | null)[] {
  let ranges = parsedRanges.get(entries);
  if (!ranges) {
    // includePrerelease: a device on 1.5.0-rc.1 is within ">=1.0.0 <2".
    ranges = entries.map((e) => (semver.validRange(e, { loose: true }) === null ? null : new semver.Range(e, { loose: true, includePrerelease: true })));
    parsedRanges.set(entries, ranges);
  }
  return ranges;
}

/** Whether the device's version matches one `allowedFromVersions` entry. */
function matchesEntry(fromVersion: string, from: SemVer | null, entry: string, range: semver.Range | null): boolean {
  if (entry === fromVersion) return true;
  // `from` is already parsed: testing the raw "1.1" would fail, since "1.1" is not a version to semver (only a range).
  return from !== null && range !== null && range.test(from);
}

/**
 * Whether a device on `fromVersion` is to be notified of `targetVersion`:
 * null to notify it, or why it is skipped. Checked in this order:
 *
 * 1. `ALREADY_ON_TARGET`: the device reports the target (the same string, or
 *    the same version by {@link compareVersions}: "1.1" is on "1.1.0").
 * 2. `NOT_ALLOWED_FROM_VERSION`: `allowedFromVersions` is set and the device
 *    never reported a version, or matches no entry. An entry matches when it
 *    is the device's version string exactly, or a semver range the device's
 *    version satisfies. A partial version is a semver X-range: "1.1" matches
 *    "1.1", "1.1.0" and "1.1.7"; write "1.1.0" for that version alone.
 * 3. `WOULD_DOWNGRADE`: the device is on a newer version than the target and
 *    the policy does not allow downgrades.
 *
 * A device that never reported a version (null) is notified when no allowed
 * list is set.
 */
export function versionGuard(
  fromVersion: string | null,
  targetVersion: string,
  policy: Pick<RolloutPolicy, "allowDowngrade" | "allowedFromVersions">,
): "ALREADY_ON_TARGET" | "WOULD_DOWNGRADE" | "NOT_ALLOWED_FROM_VERSION" | null {
  if (fromVersion !== null && (fromVersion === targetVersion || compareVersions(fromVersion, targetVersion) === 0)) return "ALREADY_ON_TARGET";
  if (policy.allowedFromVersions !== null) {
    if (fromVersion === null) return "NOT_ALLOWED_FROM_VERSION";
    const from = toSemver(fromVersion);
    const ranges = rangesOf(policy.allowedFromVersions);
    if (!policy.allowedFromVersions.some((entry, i) => matchesEntry(fromVersion, from, entry, ranges[i] ?? null))) return "NOT_ALLOWED_FROM_VERSION";
  }
  if (fromVersion !== null && !policy.allowDowngrade && compareVersions(fromVersion, targetVersion) > 0) return "WOULD_DOWNGRADE";
  return null;
}

const MAX_VERSION_CHARS = 64;
// Ranges may be longer than one version ("^1.2.0 || ^2.0.0 || >=3.1.0 <3.4"),
// but not without end.
const MAX_RANGE_CHARS = 64;
// No control, format, unassigned or private-use characters.
const PRINTABLE = /^\P{C}+$/u;

/**
 * Whether `entry` is usable in `allowedFromVersions`: a valid semver range
 * ("1.2.x", ">=1.0.0 <2", "^1.4", at most 256 characters) or a plain version
 * string matched exactly ("nightly-42", at most 64 printable characters). An
 * empty or whitespace-only entry is refused (semver would read it as "*").
 */
export function checkVersionRange(entry: string): boolean {
  if (entry.trim() === "" || !PRINTABLE.test(entry)) return false;
  if (entry.length <= MAX_RANGE_CHARS && semver.validRange(entry, { loose: true }) !== null) return true;
  return [...entry].length <= MAX_VERSION_CHARS;
}

// ---------------------------------------------------------------------------
// Waves
// ---------------------------------------------------------------------------

/** ceil(x), but an x within floating-point noise of an integer is that integer. */
function ceilDevices(x: number): number {
  const nearest = Math.round(x);
  return Math.abs(x - nearest) <= EPSILON * Math.max(1, Math.abs(x)) ? nearest : Math.ceil(x);
}

/**
 * How many of `eligible` devices each wave holds, one entry per wave spec
 * (one entry, `[eligible]`, when `waves` is empty); the sizes sum to
 * `eligible`.
 *
 * A `percent` wave reaches ceil(eligible × percent / 100) devices in all by
 * its end (at least 1 when there are devices and percent > 0; never fewer than
 * the waves before it reached): 1 % of 200 is 2 devices, 1 % of 50 is 1. A
 * `count` wave holds `count` devices, or what is left. The last wave takes
 * every device left, whatever its spec says. A wave may hold 0 devices.
 */
export function waveSizes(eligible: number, waves: readonly WaveSpec[]): number[] {
  if (waves.length === 0) return [eligible];
  const sizes: number[] = [];
  let reached = 0;
  waves.forEach((spec, i) => {
    let size: number;
    if (i === waves.length - 1) {
      size = eligible - reached;
    } else if (spec.percent !== null) {
      let cumulative = ceilDevices((eligible * spec.percent) / 100);
      if (eligible > 0 && spec.percent > 0) cumulative = Math.max(cumulative, 1);
      cumulative = Math.max(Math.min(cumulative, eligible), reached);
      size = cumulative - reached;
    } else {
      size = Math.max(0, Math.min(spec.count ?? 0, eligible - reached));
    }
    sizes.push(size);
    reached += size;
  });
  return sizes;
}

/**
 * The 0-based wave of the `index`-th (0-based) eligible device: the first
 * `sizes[0]` devices are in wave 0, the next `sizes[1]` in wave 1, and so on.
 * An index past the sizes' total is in the last wave (a device that joins
 * later goes with the last wave).
 */
export function waveOf(index: number, sizes: readonly number[]): number {
  let end = 0;
  for (let wave = 0; wave < sizes.length; wave++) {
    end += sizes[wave]!;
    if (index < end) return wave;
  }
  return Math.max(0, sizes.length - 1);
}

/**
 * Whether the wave after this one may start.
 *
 * `wave` counts this wave's executions: `eligible` those neither SKIPPED nor
 * CANCELED, `succeeded` those SUCCEEDED, `final` the eligible ones that are
 * SUCCEEDED, FAILED or TIMED_OUT. The success ratio is reached when
 * succeeded / eligible >= `spec.successRatio` (or the wave has no eligible
 * execution). `readyAt` is when it was first reached (null: not yet); it is
 * set to `now` the first time it is, and kept afterwards even if the ratio
 * falls back (devices joining the wave). The gate opens `spec.soakSeconds`
 * after `readyAt`.
 *
 * `unreachable`: the ratio is not reached and cannot be any more, even if
 * every execution still running succeeded; the caller aborts the rollout.
 */
export function waveGate(
  wave: { succeeded: number; eligible: number; final: number },
  spec: Pick<WaveSpec, "successRatio" | "soakSeconds">,
  readyAt: number | null,
  now: number,
): { open: false; readyAt: number | null; unreachable: boolean } | { open: true; readyAt: number } {
  const { succeeded, eligible, final } = wave;
  // Divisions, not multiplications: k / n rounds to the same double as the
  // decimal ratio it equals (7 / 10 === 0.7), so exactly-at-ratio holds.
  const reached = eligible === 0 || succeeded / eligible >= spec.successRatio;
  if (!reached) {
    const unreachable = (succeeded + (eligible - final)) / eligible < spec.successRatio;
    return { open: false, readyAt, unreachable };
  }
  const since = readyAt ?? now;
  if (now >= since + spec.soakSeconds * 1000) return { open: true, readyAt: since };
  return { open: false, readyAt: since, unreachable: false };
}

// ---------------------------------------------------------------------------
// Abort rules and retries
// ---------------------------------------------------------------------------

/**
 * The first of `rules` that fires, with what was observed; null when none
 * does. A rule fires once at least `minFinished` executions finished
 * (SUCCEEDED, FAILED or TIMED_OUT) and strictly more than `thresholdPercent`
 * of them failed with its class: 5 of 100 does not fire a 5 % rule, 6 do.
 */
export function abortCheck(
  counts: { finished: number; failedByClass: Readonly<Record<FailureClass, number>> },
  rules: readonly AbortRule[],
): { rule: AbortRule; failed: number; finished: number } | null {
  const { finished } = counts;
  for (const rule of rules) {
    if (finished < rule.minFinished) continue;
    const failed = counts.failedByClass[rule.failureClass] ?? 0;
    const allowed = rule.thresholdPercent * finished;
    if (failed * 100 - allowed > EPSILON * Math.max(1, allowed)) return { rule, failed, finished };
  }
  return null;
}

/** The retry rule for `failureClass`, or null when failures of that class are final. */
export function retryRuleFor(retries: readonly RetryRule[], failureClass: FailureClass): RetryRule | null {
  return retries.find((rule) => rule.failureClass === failureClass) ?? null;
}

/**
 * The pause, in milliseconds, before the next attempt once `failedAttempts`
 * attempts failed: `backoffSeconds`, doubling with each further failure, at
 * most `maxBackoffSeconds`. A count below 1 is read as 1; one that is not a
 * finite number gets the cap.
 */
export function backoffMs(rule: Pick<RetryRule, "backoffSeconds" | "maxBackoffSeconds">, failedAttempts: number): number {
  // 2 ** 60 × any sane backoff is past any cap; stopping there keeps the
  // product finite however many attempts are passed (Infinity and NaN too).
  const doublings = Number.isFinite(failedAttempts) ? Math.min(Math.max(Math.floor(failedAttempts) - 1, 0), 60) : 60;
  return Math.min(rule.backoffSeconds * 2 ** doublings, rule.maxBackoffSeconds) * 1000;
}

// ---------------------------------------------------------------------------
// Maintenance window and rate bounds
// ---------------------------------------------------------------------------

/** Milliseconds since UTC midnight of `now` (negative times too). */
function msOfDay(now: number): number {
  return ((now % DAY_MS) + DAY_MS) % DAY_MS;
}

/**
 * Whether devices may be notified at `now` under the daily UTC window: always
 * with no window; with one, from `startMinute` (inclusive) to `endMinute`
 * (exclusive), past midnight when `endMinute` < `startMinute` (22:00–02:00),
 * and all day when they are equal.
 */
export function inWindow(window: MaintenanceWindow | null, now: number): boolean {
  if (window === null || window.startMinute === window.endMinute) return true;
  const minute = Math.floor(msOfDay(now) / MINUTE_MS);
  const { startMinute, endMinute } = window;
  return startMinute < endMinute ? minute >= startMinute && minute < endMinute : minute >= startMinute || minute < endMinute;
}

/** `now` when inside the window, else the Unix ms the window next opens (later today or tomorrow, UTC). */
export function nextWindowStart(window: MaintenanceWindow | null, now: number): number {
  if (window === null || inWindow(window, now)) return now;
  const opensToday = now - msOfDay(now) + window.startMinute * MINUTE_MS;
  return opensToday > now ? opensToday : opensToday + DAY_MS;
}

/**
 * How many more devices may be notified now: the room left under
 * `maxInProgress` and under `maxPerMinute` (the smaller of the bounds set),
 * never below 0; Infinity with neither bound.
 */
export function notifyAllowance(policy: Pick<RolloutPolicy, "maxInProgress" | "maxPerMinute">, inProgress: number, notifiedLastMinute: number): number {
  let allowance = Infinity;
  if (policy.maxInProgress !== null) allowance = Math.min(allowance, policy.maxInProgress - inProgress);
  if (policy.maxPerMinute !== null) allowance = Math.min(allowance, policy.maxPerMinute - notifiedLastMinute);
  return Math.max(0, allowance);
}

/** Seconds from the first to the last of `devices` notifications at `perMinute` a minute, the first `perMinute` at once. */
function rateSeconds(devices: number, perMinute: number | null): number {
  if (perMinute === null || devices <= 0) return 0;
  return (Math.ceil(devices / perMinute) - 1) * 60;
}

/**
 * What a dry run of a rollout tells an operator.
 *
 * - `startsAt`: when the first device would be notified (Unix ms): now, or
 *   the policy's `startAt` if later, moved to the next opening of the
 *   maintenance window.
 * - `minimumSeconds`: the shortest the rollout can take from `startsAt` if
 *   every device upgrades at once: the time `maxPerMinute` takes to notify
 *   every device (the first `maxPerMinute` at once, then one minute for each
 *   further batch) plus the soak time of every wave gate (each wave but the
 *   last). 0 with no rate bound and no soak.
 * - `worstCaseSeconds`: how long it can take if every device runs into the
 *   in-progress timeout: per wave, batches of `maxInProgress` devices (all of
 *   the wave at once with no bound) that each last the whole timeout, or the
 *   wave's own notification time under `maxPerMinute` if longer; summed over
 *   the waves, plus the soaks. Retries are not counted.
 *
 * Both durations leave out the maintenance window: time outside it comes on
 * top.
 */
export function estimateDuration(
  eligibleBySize: readonly number[],
  policy: Pick<RolloutPolicy, "maxInProgress" | "maxPerMinute" | "waves" | "inProgressTimeoutSeconds" | "startAt" | "maintenanceWindow">,
  now: number,
): { startsAt: number; minimumSeconds: number; worstCaseSeconds: number } {
  const startsAt = nextWindowStart(policy.maintenanceWindow, Math.max(now, policy.startAt ?? now));
  const soaks = policy.waves.slice(0, -1).reduce((sum, wave) => sum + wave.soakSeconds, 0);
  const total = eligibleBySize.reduce((sum, size) => sum + size, 0);
  const minimumSeconds = rateSeconds(total, policy.maxPerMinute) + soaks;
  const waveSeconds = eligibleBySize.map((size) => {
    if (size <= 0) return 0;
    const batches = Math.ceil(size / (policy.maxInProgress ?? size));
    return Math.max(batches * policy.inProgressTimeoutSeconds, rateSeconds(size, policy.maxPerMinute));
  });
  const worstCaseSeconds = waveSeconds.reduce((sum, s) => sum + s, 0) + soaks;
  return { startsAt, minimumSeconds, worstCaseSeconds };
}

// ---------------------------------------------------------------------------
// Validation of a policy input
// ---------------------------------------------------------------------------

/** A field that may be left out or null, read then as `fallback`. */
function withDefault<S extends z.ZodType, D extends z.output<S> | null>(schema: S, fallback: D) {
  return schema
    .nullish()
    .transform((v): z.output<S> | D => (v === null || v === undefined ? fallback : (v as z.output<S>)));
}

/**
 * A number from `min` to `max` (more than `min` when `exclusiveMin`): every
 * failure reported as "`what` must be `range`.", or "`what` is required.".
 */
function numberIn(what: string, min: number, max: number, range: string, options: { integer?: boolean; exclusiveMin?: boolean } = {}) {
  const message = `${what} must be ${range}.`;
  let schema = z.number({ error: (issue) => (issue.input === undefined ? `${what} is required.` : message) });
  schema = options.exclusiveMin ? schema.gt(min, { error: message }) : schema.min(min, { error: message });
  schema = schema.max(max, { error: message });
  return options.integer ? schema.int({ error: message }) : schema;
}

const fmt = (n: number) => n.toLocaleString("en-US");

const failureClassSchema = z.enum(FAILURE_CLASSES, {
  error: (issue) =>
    issue.input === undefined ? "failureClass is required." : `failureClass must be one of ${FAILURE_CLASSES.join(", ")}.`,
});

const waveSchema = z
  .strictObject({
    percent: withDefault(numberIn("A wave's percent", 0, 100, "more than 0 and at most 100", { exclusiveMin: true }), null),
    count: withDefault(numberIn("A wave's count", 1, Number.MAX_SAFE_INTEGER, "a whole number of devices, at least 1", { integer: true }), null),
    successRatio: withDefault(numberIn("A wave's successRatio", 0, 1, "from 0 to 1"), 1),
    soakSeconds: withDefault(numberIn("A wave's soakSeconds", 0, 30 * DAY_SECONDS, `from 0 to ${fmt(30 * DAY_SECONDS)} (30 days)`), 0),
  })
  .superRefine((wave, ctx) => {
    if ((wave.percent === null) === (wave.count === null)) {
      ctx.addIssue({ code: "custom", message: "A wave needs exactly one of percent and count." });
    }
  });

const abortRuleSchema = z.strictObject({
  failureClass: failureClassSchema,
  thresholdPercent: numberIn("An abort rule's thresholdPercent", 0, 100, "from 0 to 100"),
  minFinished: numberIn("An abort rule's minFinished", 1, 1_000_000, `a whole number from 1 to ${fmt(1_000_000)}`, { integer: true }),
});

const retryRuleSchema = z
  .strictObject({
    failureClass: failureClassSchema,
    maxAttempts: numberIn("A retry rule's maxAttempts", 2, 20, "a whole number from 2 to 20 (it counts the first attempt)", { integer: true }),
    backoffSeconds: numberIn("A retry rule's backoffSeconds", 1, DAY_SECONDS, `from 1 to ${fmt(DAY_SECONDS)} (a day)`),
    maxBackoffSeconds: numberIn("A retry rule's maxBackoffSeconds", 1, 7 * DAY_SECONDS, `at most ${fmt(7 * DAY_SECONDS)} (7 days)`).nullish(),
  })
  .transform((rule, ctx): RetryRule => {
    // Left out, the cap is an hour, or the base pause when that is longer, so
    // that a long backoffSeconds alone is not refused over a default.
    const maxBackoffSeconds = rule.maxBackoffSeconds ?? Math.max(3600, rule.backoffSeconds);
    if (maxBackoffSeconds < rule.backoffSeconds) {
      ctx.addIssue({ code: "custom", path: ["maxBackoffSeconds"], message: "A retry rule's maxBackoffSeconds must be at least its backoffSeconds." });
      return z.NEVER;
    }
    return { failureClass: rule.failureClass, maxAttempts: rule.maxAttempts, backoffSeconds: rule.backoffSeconds, maxBackoffSeconds };
  });

const minuteOfDay = (field: string) =>
  numberIn(`The maintenance window's ${field}`, 0, 1439, "a whole number of minutes since UTC midnight, 0 to 1439", { integer: true });

const policySchema = z.strictObject(
  {
    maxInProgress: withDefault(numberIn("maxInProgress", 1, 1_000_000, `a whole number from 1 to ${fmt(1_000_000)}, or null for no bound`, { integer: true }), null),
    maxPerMinute: withDefault(numberIn("maxPerMinute", 1, 1_000_000, `a whole number from 1 to ${fmt(1_000_000)}, or null for no bound`, { integer: true }), null),
    waves: withDefault(
      z
        .array(waveSchema, { error: "waves must be a list of waves." })
        .max(20, { error: "A rollout has at most 20 waves." })
        .superRefine((waves, ctx) => {
          let previous: number | null = null;
          waves.forEach((wave, i) => {
            if (wave.percent === null) return;
            if (previous !== null && wave.percent <= previous) {
              ctx.addIssue({
                code: "custom",
                path: [i, "percent"],
                message: `Wave ${i}'s percent (${wave.percent}) must be more than the previous percent wave's (${previous}): percents are cumulative.`,
              });
            }
            previous = wave.percent;
          });
        }),
      [],
    ),
    abortRules: withDefault(
      z.array(abortRuleSchema, { error: "abortRules must be a list of abort rules." }).max(20, { error: "A rollout has at most 20 abort rules." }),
      [],
    ),
    retries: withDefault(
      z
        .array(retryRuleSchema, { error: "retries must be a list of retry rules." })
        .max(20, { error: "A rollout has at most 20 retry rules." })
        .superRefine((rules, ctx) => {
          const seen = new Set<FailureClass>();
          rules.forEach((rule, i) => {
            if (seen.has(rule.failureClass)) {
              ctx.addIssue({ code: "custom", path: [i, "failureClass"], message: `There is more than one retry rule for ${rule.failureClass}.` });
            }
            seen.add(rule.failureClass);
          });
        }),
      [],
    ),
    inProgressTimeoutSeconds: withDefault(
      numberIn("inProgressTimeoutSeconds", 10, 30 * DAY_SECONDS, `from 10 to ${fmt(30 * DAY_SECONDS)} (30 days)`, { integer: true }),
      3600,
    ),
    allowDowngrade: withDefault(z.boolean({ error: "allowDowngrade must be true or false." }), false),
    allowedFromVersions: withDefault(
      z
        .array(
          z.string({ error: "Each allowedFromVersions entry must be a string." }).refine(checkVersionRange, {
            error: "Each allowedFromVersions entry must be a semver range (1.2.x, >=1.0.0 <2) or a version of at most 64 printable characters.",
          }),
          { error: "allowedFromVersions must be a list of versions or ranges, or null for any version." },
        )
        .min(1, { error: "allowedFromVersions needs 1 to 20 entries, or null for any version." })
        .max(20, { error: "allowedFromVersions needs 1 to 20 entries, or null for any version." }),
      null,
    ),
    startAt: withDefault(z.number({ error: "startAt must be a time in Unix milliseconds, or null to start at once." }), null),
    maintenanceWindow: withDefault(
      z.strictObject(
        { startMinute: minuteOfDay("startMinute"), endMinute: minuteOfDay("endMinute") },
        { error: "maintenanceWindow must be an object with startMinute and endMinute, or null for none." },
      ),
      null,
    ),
  },
  { error: "The policy must be an object." },
);

/**
 * Validates an operator's rollout policy and fills in the defaults; every
 * field may be left out or null (the whole input too: the default policy).
 *
 * On failure, `reason` is the dotted path of the first offending field
 * (`policy.waves.1.percent`; `policy` for the input itself) and `message` a
 * sentence for the operator. Unknown fields are refused, so that a misspelt
 * bound is not silently dropped.
 */
export function checkPolicy(input: unknown): Result<RolloutPolicy, string> {
  const parsed = policySchema.safeParse(input ?? {});
  if (parsed.success) return ok(parsed.data satisfies RolloutPolicy);
  const issue = parsed.error.issues[0]!;
  const path = ["policy", ...issue.path.map(String)];
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0]!;
    const where = path.length > 1 ? path.join(".") : "a rollout policy";
    return fail([...path, key].join("."), `${key} is not a field of ${where}.`);
  }
  return fail(path.join("."), issue.message);
}
