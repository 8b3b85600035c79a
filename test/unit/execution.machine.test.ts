import { describe, expect, it } from "vitest";
import type { FailureReason } from "../../src/ota/progress.model.js";
import { transition, type ExecutionEvent, type Transition } from "../../src/rollouts/execution.machine.js";
import { SKIP_REASONS, type Attempt, type Execution, type RetryRule, type RolloutPolicy } from "../../src/rollouts/rollout.model.js";
import { backoffMs } from "../../src/rollouts/rollout.policy.js";

type Policy = Pick<RolloutPolicy, "retries" | "inProgressTimeoutSeconds">;

/** Now, for every transition unless a test says otherwise. */
const T = 1_700_000_000_000;
const TARGET = "2.0";
const FROM = "1.0";
const OTHER = "1.5";
/** A tenth of the 600 s timeout: how often a same-phase report is written. */
const TENTH = 60_000;

function deepFreeze<V>(value: V): V {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

const NO_RETRIES: Policy = deepFreeze({ retries: [], inProgressTimeoutSeconds: 600 });
const policyWith = (...retries: RetryRule[]): Policy => deepFreeze({ retries, inProgressTimeoutSeconds: 600 });
const rule = (failureClass: RetryRule["failureClass"], maxAttempts: number, backoffSeconds = 10, maxBackoffSeconds = 25): RetryRule => ({
  failureClass,
  maxAttempts,
  backoffSeconds,
  maxBackoffSeconds,
});

/** Applies `event` to a frozen copy of `execution` and checks the input came out untouched. */
function apply(execution: Execution, event: ExecutionEvent, policy: Policy = NO_RETRIES, now = T): Transition {
  const before = structuredClone(execution);
  const t = transition(deepFreeze(structuredClone(execution)), deepFreeze({ ...event }), policy, TARGET, now);
  expect(execution).toStrictEqual(before);
  return t;
}

function moved(t: Transition): Execution {
  if (!t.changed) throw new Error(`expected a change, got unchanged: ${t.why}`);
  return t.next;
}

function stays(t: Transition): string {
  if (t.changed) throw new Error(`expected no change, got ${JSON.stringify(t.next)}`);
  expect(typeof t.why).toBe("string");
  expect(t.why.trim()).not.toBe("");
  return t.why;
}

// ---------------------------------------------------------------------------
// One fixture per state, each as the machine itself would have left it.
// ---------------------------------------------------------------------------

const NOTIFIED_AT = T - 120_000;
const SEEN_AT = T - 30_000; // within a tenth of the timeout of now
const ENDED_AT = T - 60_000;
const CREATED_AT = T - 600_000;

const running: Attempt = { requestId: "r1", notifiedAt: NOTIFIED_AT, outcome: null, endedAt: null };
const endedAs = (outcome: NonNullable<Attempt["outcome"]>, at = ENDED_AT): Attempt => ({ ...running, outcome, endedAt: at });
/** The running attempt closed now. */
const closedNow = (outcome: NonNullable<Attempt["outcome"]>): Attempt => endedAs(outcome, T);
const earlier: Attempt = { requestId: "r0", notifiedAt: T - 900_000, outcome: "DOWNLOAD_FAILED", endedAt: T - 300_000 };

const base: Execution = { state: "QUEUED", failureClass: null, skipReason: null, fromVersion: FROM, attempts: [], notBefore: null, lastEventAt: CREATED_AT };

const FIXTURES = {
  QUEUED: base,
  /** Queued again after a failed attempt, its backoff over. */
  "QUEUED (retrying)": { ...base, attempts: [earlier], notBefore: T - 1_000, lastEventAt: T - 300_000 },
  NOTIFIED: { ...base, state: "NOTIFIED", attempts: [running], lastEventAt: NOTIFIED_AT },
  DOWNLOADING: { ...base, state: "DOWNLOADING", attempts: [running], lastEventAt: SEEN_AT },
  DOWNLOADED: { ...base, state: "DOWNLOADED", attempts: [running], lastEventAt: SEEN_AT },
  SUCCEEDED: { ...base, state: "SUCCEEDED", attempts: [endedAs("SUCCEEDED")], lastEventAt: ENDED_AT },
  FAILED: { ...base, state: "FAILED", failureClass: "MD5_MISMATCH", attempts: [endedAs("MD5_MISMATCH")], lastEventAt: ENDED_AT },
  TIMED_OUT: { ...base, state: "TIMED_OUT", failureClass: "TIMED_OUT", attempts: [endedAs("TIMED_OUT")], lastEventAt: ENDED_AT },
  SKIPPED: { ...base, state: "SKIPPED", skipReason: "WOULD_DOWNGRADE", lastEventAt: ENDED_AT },
  CANCELED: { ...base, state: "CANCELED", attempts: [endedAs("CANCELED")], lastEventAt: ENDED_AT },
} satisfies Record<string, Execution>;
type Fixture = keyof typeof FIXTURES;
const FIXTURE_NAMES = Object.keys(FIXTURES) as Fixture[];
const RUNNING_FIXTURES = ["NOTIFIED", "DOWNLOADING", "DOWNLOADED"] as const satisfies readonly Fixture[];
deepFreeze(FIXTURES);

// ---------------------------------------------------------------------------
// The (state × event) table: the cells that move, with the exact next
// execution; every other cell is unchanged, with a reason matching `why`.
// ---------------------------------------------------------------------------

interface Row {
  event: ExecutionEvent;
  /** Rewrites the fixture before the event (fromVersion null). */
  input?: (x: Execution) => Execution;
  /** What an unchanged cell says, in substance. */
  why: RegExp | Partial<Record<Fixture, RegExp>> & { otherwise: RegExp };
  moves: Partial<Record<Fixture, (x: Execution) => Execution>>;
}

/** A running execution failed for good: FAILED (or TIMED_OUT) with the class, the attempt closed now. */
const finalFailure = (failureClass: NonNullable<Execution["failureClass"]>) => (x: Execution): Execution => ({
  ...x,
  state: failureClass === "TIMED_OUT" ? "TIMED_OUT" : "FAILED",
  failureClass,
  attempts: [closedNow(failureClass)],
  notBefore: null,
  lastEventAt: T,
});
const runningOnly = (to: (x: Execution) => Execution) => ({ NOTIFIED: to, DOWNLOADING: to, DOWNLOADED: to });
const notRunning = (what: string) => new RegExp(`^a progress report does not move a (${what}) execution$`);

const FAILURE_REASONS: readonly FailureReason[] = ["DOWNLOAD_FAILED", "MD5_MISMATCH", "INSTALL_FAILED", "OTHER"];

const ROWS: Record<string, Row> = {
  "skip (WOULD_DOWNGRADE)": {
    event: { type: "skip", reason: "WOULD_DOWNGRADE" },
    why: /^a \w+ execution is not skipped$/,
    moves: {
      QUEUED: (x) => ({ ...x, state: "SKIPPED", skipReason: "WOULD_DOWNGRADE", notBefore: null, lastEventAt: T }),
      "QUEUED (retrying)": (x) => ({ ...x, state: "SKIPPED", skipReason: "WOULD_DOWNGRADE", attempts: [earlier], notBefore: null, lastEventAt: T }),
    },
  },
  "notified (r2)": {
    event: { type: "notified", requestId: "r2" },
    why: /^a \w+ execution is not notified$/,
    moves: {
      QUEUED: (x) => ({ ...x, state: "NOTIFIED", attempts: [{ requestId: "r2", notifiedAt: T, outcome: null, endedAt: null }], notBefore: null, lastEventAt: T }),
      "QUEUED (retrying)": (x) => ({
        ...x,
        state: "NOTIFIED",
        attempts: [earlier, { requestId: "r2", notifiedAt: T, outcome: null, endedAt: null }],
        notBefore: null,
        lastEventAt: T,
      }),
    },
  },
  "progress DOWNLOADING": {
    event: { type: "progress", phase: "DOWNLOADING" },
    why: { DOWNLOADING: /^the same phase, recently seen$/, DOWNLOADED: /^behind the stored report$/, otherwise: notRunning("\\w+") },
    moves: { NOTIFIED: (x) => ({ ...x, state: "DOWNLOADING", lastEventAt: T }) },
  },
  "progress DOWNLOADED": {
    event: { type: "progress", phase: "DOWNLOADED" },
    why: { DOWNLOADED: /^the same phase, recently seen$/, otherwise: notRunning("\\w+") },
    moves: {
      NOTIFIED: (x) => ({ ...x, state: "DOWNLOADED", lastEventAt: T }),
      DOWNLOADING: (x) => ({ ...x, state: "DOWNLOADED", lastEventAt: T }),
    },
  },
  ...Object.fromEntries(
    FAILURE_REASONS.map((reason): [string, Row] => [
      `progress FAILED ${reason}`,
      { event: { type: "progress", phase: "FAILED", reason }, why: notRunning("\\w+"), moves: runningOnly(finalFailure(reason)) },
    ]),
  ),
  "status of the target version": {
    event: { type: "status", firmwareVersion: TARGET },
    why: /^a status report does not move a \w+ execution$/,
    moves: runningOnly((x) => ({ ...x, state: "SUCCEEDED", failureClass: null, attempts: [closedNow("SUCCEEDED")], notBefore: null, lastEventAt: T })),
  },
  "status of the from-version": {
    event: { type: "status", firmwareVersion: FROM },
    why: { NOTIFIED: /another version/, DOWNLOADING: /another version/, otherwise: /^a status report does not move a \w+ execution$/ },
    moves: { DOWNLOADED: finalFailure("ROLLED_BACK") },
  },
  "status of another version": {
    event: { type: "status", firmwareVersion: OTHER },
    why: { NOTIFIED: /another version/, DOWNLOADING: /another version/, DOWNLOADED: /another version/, otherwise: /^a status report does not move/ },
    moves: {},
  },
  "status of some version, fromVersion null": {
    event: { type: "status", firmwareVersion: OTHER },
    input: (x) => ({ ...x, fromVersion: null }),
    why: { NOTIFIED: /another version/, DOWNLOADING: /another version/, otherwise: /^a status report does not move/ },
    moves: { DOWNLOADED: finalFailure("ROLLED_BACK") },
  },
  timeout: {
    event: { type: "timeout" },
    why: /^a \w+ execution does not time out$/,
    moves: runningOnly(finalFailure("TIMED_OUT")),
  },
  "cancel, not withdrawn": {
    event: { type: "cancel", withdrawn: false },
    why: /^a \w+ execution runs to its end$/,
    moves: {
      QUEUED: (x) => ({ ...x, state: "CANCELED", failureClass: null, attempts: [], notBefore: null, lastEventAt: T }),
      // The earlier attempt already ended: its outcome stays.
      "QUEUED (retrying)": (x) => ({ ...x, state: "CANCELED", failureClass: null, attempts: [earlier], notBefore: null, lastEventAt: T }),
    },
  },
  "cancel, withdrawn": {
    event: { type: "cancel", withdrawn: true },
    why: /^a \w+ execution runs to its end$/,
    moves: {
      QUEUED: (x) => ({ ...x, state: "CANCELED", failureClass: null, attempts: [], notBefore: null, lastEventAt: T }),
      "QUEUED (retrying)": (x) => ({ ...x, state: "CANCELED", failureClass: null, attempts: [earlier], notBefore: null, lastEventAt: T }),
      ...runningOnly((x) => ({ ...x, state: "CANCELED", failureClass: null, attempts: [closedNow("CANCELED")], notBefore: null, lastEventAt: T })),
    },
  },
  retry: {
    event: { type: "retry" },
    why: /^a \w+ execution is not retried$/,
    moves: {
      FAILED: (x) => ({ ...x, state: "QUEUED", failureClass: null, attempts: [endedAs("MD5_MISMATCH")], notBefore: null, lastEventAt: T }),
      TIMED_OUT: (x) => ({ ...x, state: "QUEUED", failureClass: null, attempts: [endedAs("TIMED_OUT")], notBefore: null, lastEventAt: T }),
    },
  },
};

const CELLS = Object.entries(ROWS).flatMap(([eventName, row]) => FIXTURE_NAMES.map((fixture) => ({ eventName, fixture, row })));

describe("every event from every execution state (no retry rules)", () => {
  it.each(CELLS.filter(({ row, fixture }) => row.moves[fixture]))("$eventName moves a $fixture execution to exactly the next one", ({ row, fixture }) => {
    const input = (row.input ?? ((x) => x))(FIXTURES[fixture]);
    expect(moved(apply(input, row.event))).toStrictEqual(row.moves[fixture]!(input));
  });

  it.each(CELLS.filter(({ row, fixture }) => !row.moves[fixture]))("$eventName leaves a $fixture execution unchanged, saying why", ({ row, fixture }) => {
    const input = (row.input ?? ((x) => x))(FIXTURES[fixture]);
    const why = stays(apply(input, row.event));
    const expected = row.why instanceof RegExp ? row.why : (row.why[fixture] ?? row.why.otherwise);
    expect(why).toMatch(expected);
  });

  it("names the state it refuses to move in its reason", () => {
    expect(stays(apply(FIXTURES.SUCCEEDED, { type: "skip", reason: "ALREADY_ON_TARGET" }))).toBe("a SUCCEEDED execution is not skipped");
    expect(stays(apply(FIXTURES.CANCELED, { type: "progress", phase: "DOWNLOADING" }))).toBe("a progress report does not move a CANCELED execution");
    expect(stays(apply(FIXTURES.QUEUED, { type: "timeout" }))).toBe("a QUEUED execution does not time out");
  });

  it("skips a queued device for each skip reason, recording the reason", () => {
    for (const reason of SKIP_REASONS) {
      expect(moved(apply(FIXTURES.QUEUED, { type: "skip", reason })), reason).toStrictEqual({ ...base, state: "SKIPPED", skipReason: reason, lastEventAt: T });
    }
  });

  it("covers the 9 states, both QUEUED flavours, and every event type", () => {
    expect(new Set(FIXTURE_NAMES.map((f) => FIXTURES[f].state)).size).toBe(9);
    expect(new Set(Object.values(ROWS).map((r) => r.event.type))).toEqual(new Set(["skip", "notified", "progress", "status", "timeout", "cancel", "retry"]));
    expect(CELLS).toHaveLength(Object.keys(ROWS).length * 10);
  });
});

describe("a failure under a retry rule", () => {
  const downloads = rule("DOWNLOAD_FAILED", 5, 10, 25);

  it("queues the execution again after backoffSeconds, closing the attempt with the failure", () => {
    const next = moved(apply(FIXTURES.DOWNLOADING, { type: "progress", phase: "FAILED", reason: "DOWNLOAD_FAILED" }, policyWith(downloads)));
    expect(next).toStrictEqual({
      ...FIXTURES.DOWNLOADING,
      state: "QUEUED",
      failureClass: null,
      attempts: [closedNow("DOWNLOAD_FAILED")],
      notBefore: T + 10_000,
      lastEventAt: T,
    });
  });

  it("doubles the backoff with each failed attempt up to the cap, then fails for good after maxAttempts attempts", () => {
    const policy = policyWith(downloads);
    let x: Execution = FIXTURES.QUEUED;
    let now = T;
    const pauses: number[] = [];
    for (let n = 1; n <= 5; n++) {
      x = moved(apply(x, { type: "notified", requestId: `r${n}` }, policy, now));
      now += 1_000;
      x = moved(apply(x, { type: "progress", phase: "FAILED", reason: "DOWNLOAD_FAILED" }, policy, now));
      expect(x.attempts).toHaveLength(n);
      expect(x.attempts[n - 1]).toStrictEqual({ requestId: `r${n}`, notifiedAt: now - 1_000, outcome: "DOWNLOAD_FAILED", endedAt: now });
      if (x.state === "QUEUED") {
        expect(x.failureClass).toBeNull();
        expect(x.notBefore).toBe(now + backoffMs(downloads, n));
        pauses.push(x.notBefore! - now);
        now = x.notBefore!;
      }
    }
    expect(pauses).toEqual([10_000, 20_000, 25_000, 25_000]);
    expect(x).toMatchObject({ state: "FAILED", failureClass: "DOWNLOAD_FAILED", notBefore: null, lastEventAt: now });
    expect(x.attempts.map((a) => a.outcome)).toEqual(Array(5).fill("DOWNLOAD_FAILED"));
    // Final: nothing but an operator's retry moves it.
    expect(stays(apply(x, { type: "notified", requestId: "r6" }, policy, now))).toMatch(/not notified/);
    expect(stays(apply(x, { type: "progress", phase: "FAILED", reason: "DOWNLOAD_FAILED" }, policy, now))).toMatch(/does not move/);
  });

  it("queues again while fewer than maxAttempts attempts were made, and fails at exactly maxAttempts", () => {
    const policy = policyWith(rule("INSTALL_FAILED", 3));
    const failing = (attempts: Attempt[]): Execution => ({ ...FIXTURES.DOWNLOADED, attempts });
    const two = failing([{ ...earlier, outcome: "INSTALL_FAILED" }, running]);
    const three = failing([{ ...earlier, outcome: "INSTALL_FAILED" }, { ...earlier, requestId: "r0b" }, running]);
    const event: ExecutionEvent = { type: "progress", phase: "FAILED", reason: "INSTALL_FAILED" };
    expect(moved(apply(two, event, policy))).toStrictEqual({
      ...two,
      state: "QUEUED",
      attempts: [two.attempts[0], closedNow("INSTALL_FAILED")],
      notBefore: T + 20_000,
      lastEventAt: T,
    });
    expect(moved(apply(three, event, policy))).toStrictEqual({
      ...three,
      state: "FAILED",
      failureClass: "INSTALL_FAILED",
      attempts: [three.attempts[0], three.attempts[1], closedNow("INSTALL_FAILED")],
      notBefore: null,
      lastEventAt: T,
    });
  });

  it("counts every attempt of the execution, whatever class its earlier attempts failed with", () => {
    const policy = policyWith(rule("DOWNLOAD_FAILED", 2), rule("TIMED_OUT", 5));
    const second = { ...FIXTURES.DOWNLOADING, attempts: [{ ...earlier, outcome: "TIMED_OUT" as const }, running] };
    expect(moved(apply(second, { type: "progress", phase: "FAILED", reason: "DOWNLOAD_FAILED" }, policy))).toMatchObject({
      state: "FAILED",
      failureClass: "DOWNLOAD_FAILED",
    });
  });

  it("uses only the rule of the failure's own class", () => {
    const policy = policyWith(rule("DOWNLOAD_FAILED", 5));
    for (const reason of ["MD5_MISMATCH", "INSTALL_FAILED", "OTHER"] as const) {
      expect(moved(apply(FIXTURES.DOWNLOADING, { type: "progress", phase: "FAILED", reason }, policy)), reason).toStrictEqual(
        finalFailure(reason)(FIXTURES.DOWNLOADING),
      );
    }
    expect(moved(apply(FIXTURES.DOWNLOADING, { type: "timeout" }, policy))).toStrictEqual(finalFailure("TIMED_OUT")(FIXTURES.DOWNLOADING));
  });

  it("retries a timeout under a TIMED_OUT rule, and ends in TIMED_OUT (not FAILED) once the attempts are used up", () => {
    const policy = policyWith(rule("TIMED_OUT", 2, 30, 3600));
    const first = moved(apply(FIXTURES.NOTIFIED, { type: "timeout" }, policy));
    expect(first).toStrictEqual({ ...FIXTURES.NOTIFIED, state: "QUEUED", failureClass: null, attempts: [closedNow("TIMED_OUT")], notBefore: T + 30_000, lastEventAt: T });
    const again = moved(apply(first, { type: "notified", requestId: "r2" }, policy, T + 30_000));
    const last = moved(apply(again, { type: "timeout" }, policy, T + 90_000));
    expect(last).toStrictEqual({
      ...FIXTURES.NOTIFIED,
      state: "TIMED_OUT",
      failureClass: "TIMED_OUT",
      attempts: [closedNow("TIMED_OUT"), { requestId: "r2", notifiedAt: T + 30_000, outcome: "TIMED_OUT", endedAt: T + 90_000 }],
      notBefore: null,
      lastEventAt: T + 90_000,
    });
  });

  it("retries a silent rollback under a ROLLED_BACK rule", () => {
    const next = moved(apply(FIXTURES.DOWNLOADED, { type: "status", firmwareVersion: FROM }, policyWith(rule("ROLLED_BACK", 3, 60, 600))));
    expect(next).toStrictEqual({ ...FIXTURES.DOWNLOADED, state: "QUEUED", failureClass: null, attempts: [closedNow("ROLLED_BACK")], notBefore: T + 60_000, lastEventAt: T });
  });

  it("takes up again, on retry, an execution canceled before it was ever notified (its rollout aborted first), not one that was", () => {
    const neverNotified: Execution = { ...base, state: "CANCELED", lastEventAt: ENDED_AT };
    expect(moved(apply(neverNotified, { type: "retry" }))).toStrictEqual({ ...neverNotified, state: "QUEUED", notBefore: null, lastEventAt: T });
    expect(stays(apply(FIXTURES.CANCELED, { type: "retry" }))).toBe("a CANCELED execution is not retried");
  });

  it("keeps counting the attempts after an operator's retry: a failure past maxAttempts is final at once", () => {
    const policy = policyWith(rule("MD5_MISMATCH", 2));
    const failed: Execution = { ...FIXTURES.FAILED, attempts: [{ ...earlier, outcome: "MD5_MISMATCH" }, endedAs("MD5_MISMATCH")] };
    const queued = moved(apply(failed, { type: "retry" }, policy));
    const notified = moved(apply(queued, { type: "notified", requestId: "r9" }, policy, T + 1));
    const next = moved(apply(notified, { type: "progress", phase: "FAILED", reason: "MD5_MISMATCH" }, policy, T + 2));
    expect(next).toMatchObject({ state: "FAILED", failureClass: "MD5_MISMATCH", notBefore: null });
    expect(next.attempts.map((a) => [a.requestId, a.outcome])).toEqual([
      ["r0", "MD5_MISMATCH"],
      ["r1", "MD5_MISMATCH"],
      ["r9", "MD5_MISMATCH"],
    ]);
  });

  it("does not spend an attempt on a repeated failure report: the queued execution ignores it", () => {
    const policy = policyWith(downloads);
    const event: ExecutionEvent = { type: "progress", phase: "FAILED", reason: "DOWNLOAD_FAILED" };
    const queued = moved(apply(FIXTURES.DOWNLOADING, event, policy));
    expect(stays(apply(queued, event, policy, T + 5))).toBe("a progress report does not move a QUEUED execution");
  });
});

describe("a silent rollback", () => {
  it("is a status report of the from-version after DOWNLOADED, and only then", () => {
    const event: ExecutionEvent = { type: "status", firmwareVersion: FROM };
    expect(stays(apply(FIXTURES.NOTIFIED, event))).toMatch(/another version/);
    expect(stays(apply(FIXTURES.DOWNLOADING, event))).toMatch(/another version/);
    expect(moved(apply(FIXTURES.DOWNLOADED, event))).toStrictEqual({
      ...FIXTURES.DOWNLOADED,
      state: "FAILED",
      failureClass: "ROLLED_BACK",
      attempts: [closedNow("ROLLED_BACK")],
      notBefore: null,
      lastEventAt: T,
    });
  });

  it("is any version but the target after DOWNLOADED when the from-version is unknown", () => {
    for (const firmwareVersion of [FROM, OTHER, "9.9"]) {
      const x = { ...FIXTURES.DOWNLOADED, fromVersion: null };
      expect(moved(apply(x, { type: "status", firmwareVersion })), firmwareVersion).toMatchObject({ state: "FAILED", failureClass: "ROLLED_BACK" });
    }
    expect(stays(apply({ ...FIXTURES.DOWNLOADING, fromVersion: null }, { type: "status", firmwareVersion: FROM }))).toMatch(/another version/);
  });

  it("is not a third version after DOWNLOADED when the from-version is known", () => {
    expect(stays(apply(FIXTURES.DOWNLOADED, { type: "status", firmwareVersion: OTHER }))).toMatch(/another version/);
  });

  it("gives way to the target version, which succeeds from every running state", () => {
    for (const fixture of RUNNING_FIXTURES) {
      expect(moved(apply({ ...FIXTURES[fixture], fromVersion: null }, { type: "status", firmwareVersion: TARGET })).state, fixture).toBe("SUCCEEDED");
    }
  });
});

describe("progress reports within an attempt", () => {
  it("never go backwards: DOWNLOADING after DOWNLOADED is ignored however late it comes", () => {
    for (const now of [T, SEEN_AT + TENTH, T + 3_600_000]) {
      expect(stays(apply(FIXTURES.DOWNLOADED, { type: "progress", phase: "DOWNLOADING" }, NO_RETRIES, now))).toBe("behind the stored report");
    }
  });

  it("may skip DOWNLOADING: NOTIFIED goes straight to DOWNLOADED", () => {
    expect(moved(apply(FIXTURES.NOTIFIED, { type: "progress", phase: "DOWNLOADED" }))).toStrictEqual({ ...FIXTURES.NOTIFIED, state: "DOWNLOADED", lastEventAt: T });
  });

  it.each(["DOWNLOADING", "DOWNLOADED"] as const)("in the same phase (%s) refresh lastEventAt only once a tenth of the timeout passed", (phase) => {
    const x = FIXTURES[phase];
    const event: ExecutionEvent = { type: "progress", phase };
    expect(stays(apply(x, event, NO_RETRIES, x.lastEventAt))).toBe("the same phase, recently seen");
    expect(stays(apply(x, event, NO_RETRIES, x.lastEventAt + TENTH - 1))).toBe("the same phase, recently seen");
    expect(moved(apply(x, event, NO_RETRIES, x.lastEventAt + TENTH))).toStrictEqual({ ...x, lastEventAt: x.lastEventAt + TENTH });
    expect(moved(apply(x, event, NO_RETRIES, x.lastEventAt + 10 * TENTH))).toStrictEqual({ ...x, lastEventAt: x.lastEventAt + 10 * TENTH });
  });

  it("measure the tenth from the policy's own timeout", () => {
    const hour: Policy = { retries: [], inProgressTimeoutSeconds: 3600 };
    const x = FIXTURES.DOWNLOADING;
    const event: ExecutionEvent = { type: "progress", phase: "DOWNLOADING" };
    expect(stays(apply(x, event, hour, x.lastEventAt + 359_999))).toBe("the same phase, recently seen");
    expect(moved(apply(x, event, hour, x.lastEventAt + 360_000)).lastEventAt).toBe(x.lastEventAt + 360_000);
  });

  it("fail from any running phase, DOWNLOADED included", () => {
    for (const fixture of RUNNING_FIXTURES) {
      expect(moved(apply(FIXTURES[fixture], { type: "progress", phase: "FAILED", reason: "INSTALL_FAILED" })), fixture).toStrictEqual(
        finalFailure("INSTALL_FAILED")(FIXTURES[fixture]),
      );
    }
  });
});

describe("attempts", () => {
  it("are appended by notified with the broker's requestId and now, the older ones kept", () => {
    const first = moved(apply(FIXTURES.QUEUED, { type: "notified", requestId: "abc" }));
    expect(first.attempts).toStrictEqual([{ requestId: "abc", notifiedAt: T, outcome: null, endedAt: null }]);
    const retried = moved(apply(FIXTURES["QUEUED (retrying)"], { type: "notified", requestId: "def" }, NO_RETRIES, T + 7));
    expect(retried.attempts).toStrictEqual([earlier, { requestId: "def", notifiedAt: T + 7, outcome: null, endedAt: null }]);
    expect(retried.notBefore).toBeNull();
  });

  it("end with the outcome of the transition that closes the running one", () => {
    const cases: [Execution, ExecutionEvent, Attempt["outcome"]][] = [
      [FIXTURES.DOWNLOADED, { type: "status", firmwareVersion: TARGET }, "SUCCEEDED"],
      [FIXTURES.DOWNLOADING, { type: "progress", phase: "FAILED", reason: "MD5_MISMATCH" }, "MD5_MISMATCH"],
      [FIXTURES.DOWNLOADED, { type: "status", firmwareVersion: FROM }, "ROLLED_BACK"],
      [FIXTURES.NOTIFIED, { type: "timeout" }, "TIMED_OUT"],
      [FIXTURES.NOTIFIED, { type: "cancel", withdrawn: true }, "CANCELED"],
    ];
    for (const [x, event, outcome] of cases) {
      expect(moved(apply(x, event, NO_RETRIES, T + 42)).attempts, outcome!).toStrictEqual([{ ...running, outcome, endedAt: T + 42 }]);
    }
  });

  it("that already ended are never rewritten", () => {
    const x: Execution = { ...FIXTURES.DOWNLOADING, attempts: [earlier, { ...earlier, requestId: "r0b", outcome: "TIMED_OUT" }, running] };
    const next = moved(apply(x, { type: "status", firmwareVersion: TARGET }));
    expect(next.attempts).toStrictEqual([earlier, { ...earlier, requestId: "r0b", outcome: "TIMED_OUT" }, closedNow("SUCCEEDED")]);
  });

  it("are not touched by moves within an attempt, a skip or a retry", () => {
    expect(moved(apply(FIXTURES.NOTIFIED, { type: "progress", phase: "DOWNLOADING" })).attempts).toStrictEqual([running]);
    expect(moved(apply(FIXTURES["QUEUED (retrying)"], { type: "skip", reason: "DEVICE_DELETED" })).attempts).toStrictEqual([earlier]);
    expect(moved(apply(FIXTURES.TIMED_OUT, { type: "retry" })).attempts).toStrictEqual([endedAs("TIMED_OUT")]);
  });
});

describe("applying the same event twice", () => {
  const policy = policyWith(rule("DOWNLOAD_FAILED", 3));
  const cases: [string, Execution, ExecutionEvent][] = [
    ["skip", FIXTURES.QUEUED, { type: "skip", reason: "DEVICE_SUSPENDED" }],
    ["notified", FIXTURES.QUEUED, { type: "notified", requestId: "r2" }],
    ["progress DOWNLOADING", FIXTURES.NOTIFIED, { type: "progress", phase: "DOWNLOADING" }],
    ["progress DOWNLOADED", FIXTURES.DOWNLOADING, { type: "progress", phase: "DOWNLOADED" }],
    ["progress FAILED, final", FIXTURES.DOWNLOADING, { type: "progress", phase: "FAILED", reason: "OTHER" }],
    ["progress FAILED, retried", FIXTURES.DOWNLOADING, { type: "progress", phase: "FAILED", reason: "DOWNLOAD_FAILED" }],
    ["status of the target", FIXTURES.DOWNLOADED, { type: "status", firmwareVersion: TARGET }],
    ["status of the from-version", FIXTURES.DOWNLOADED, { type: "status", firmwareVersion: FROM }],
    ["timeout", FIXTURES.DOWNLOADED, { type: "timeout" }],
    ["cancel, not withdrawn", FIXTURES.QUEUED, { type: "cancel", withdrawn: false }],
    ["cancel, withdrawn", FIXTURES.NOTIFIED, { type: "cancel", withdrawn: true }],
    ["retry", FIXTURES.FAILED, { type: "retry" }],
  ];

  it.each(cases)("changes nothing the second time: %s", (_, x, event) => {
    const once = moved(apply(x, event, policy));
    stays(apply(once, event, policy));
    stays(apply(once, event, policy, T + 1));
  });

  it("refreshes lastEventAt the second time for a same-phase progress report only after a tenth of the timeout", () => {
    const once = moved(apply(FIXTURES.NOTIFIED, { type: "progress", phase: "DOWNLOADING" }, policy));
    stays(apply(once, { type: "progress", phase: "DOWNLOADING" }, policy, T + TENTH - 1));
    expect(moved(apply(once, { type: "progress", phase: "DOWNLOADING" }, policy, T + TENTH))).toStrictEqual({ ...once, lastEventAt: T + TENTH });
  });
});

describe("the inputs", () => {
  it("are never mutated, frozen or not, whatever the event", () => {
    const policy = policyWith(rule("DOWNLOAD_FAILED", 3), rule("TIMED_OUT", 3), rule("ROLLED_BACK", 3));
    for (const fixture of FIXTURE_NAMES) {
      for (const row of Object.values(ROWS)) {
        const input = structuredClone((row.input ?? ((x) => x))(FIXTURES[fixture]));
        const snapshot = structuredClone(input);
        const event = structuredClone(row.event);
        const t = transition(input, event, policy, TARGET, T);
        expect(input).toStrictEqual(snapshot);
        expect(event).toStrictEqual(row.event);
        if (t.changed) expect(t.next).not.toBe(input);
      }
    }
    expect(policy).toStrictEqual(policyWith(rule("DOWNLOAD_FAILED", 3), rule("TIMED_OUT", 3), rule("ROLLED_BACK", 3)));
  });
});
