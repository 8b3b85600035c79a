import { LRUCache } from "lru-cache";
import { upTo } from "../lru.js";
import { requireName } from "../devices/device.service.js";
import { AppError, ErrorCode, badInput } from "../errors.js";
import type { ArtifactService } from "../firmware/artifact.service.js";
import type { Logger } from "../logger.js";
import { checkFirmware } from "../ota/firmware.js";
import type { CommandPublisher, DeviceSessions, ProgressStore } from "../ota/ports.js";
import type { ProgressRecord } from "../ota/progress.model.js";
import { decodeCreatedCursor, encodeCreatedCursor, isUuid, newObjectId } from "../protocol/object-id.js";
import { buildCommandTopic } from "../protocol/topics.js";
import { transition, type ExecutionEvent } from "./execution.machine.js";
import {
  ACTIVE_ROLLOUT,
  EXECUTION_STATES,
  FAILURE_CLASSES,
  FINAL,
  IN_PROGRESS,
  emptyCounts,
  type AbortCause,
  type ExecutionCounts,
  type ExecutionState,
  type FailureClass,
  type Membership,
  type Rollout,
  type RolloutFirmware,
  type RolloutPolicy,
  type RolloutState,
  type RolloutTarget,
} from "./rollout.model.js";
import type { RolloutSnapshot } from "./rollout.feed.js";
import { newExecution, planRollout, type RolloutPlan } from "./rollout.plan.js";
import { abortCheck, checkPolicy, inWindow, notifyAllowance, waveGate } from "./rollout.policy.js";
import type { CountRow, ExecutionRow, RolloutRepository, RunningExecution } from "./rollout.repository.js";

export interface RolloutInput {
  productName: string;
  name?: string | null;
  target: { tag?: string | null; deviceNames?: readonly string[] | null; wholeProduct?: boolean | null };
  membership?: Membership | null;
  /** Exactly one of firmware (url, version, size, md5, type, sha256) and firmwareId (an uploaded artifact). */
  firmware?: Record<string, unknown> | null;
  firmwareId?: string | null;
  policy?: unknown;
}

/** Tells every instance that a rollout changed: subscribers recount, ingest re-reads which versions are in play. */
export interface RolloutSignals {
  changed(rolloutId: string, productName: string): void;
}

export interface RolloutServiceOptions {
  /** Uploaded artifacts: a rollout by firmwareId sends each device a download URL signed for it. */
  artifacts: ArtifactService;
  log: Logger;
  signals: RolloutSignals;
  /** A command the broker has not confirmed within this may still be on its way: sent again only after twice this. */
  publishTimeoutMs: number;
  /** Asks the scheduler for a pass now (a rollout was created, resumed or retried). */
  wake: () => void;
  now?: () => number;
}

/** Devices whose queued commands a cancel withdraws at once. */
const WITHDRAW_CONCURRENCY = 16;
/** Commands being sent at once by one scheduler pass (each waits on Redis and the broker, not on the CPU). */
const SEND_CONCURRENCY = 128;
/** Executions one scheduler pass notifies, times out or re-sends, at most: a pass stays short, the next goes on. */
const PASS_LIMIT = 500;
/**
 * How long ingest trusts its list of target versions in play per product.
 * A new (or retried) rollout notifies no device before twice this has passed,
 * so every instance's ingest knows it before a device can answer (a read
 * begun just before the change may be kept for one period).
 */
export const VERSIONS_TTL_MS = 1_000;
const FIRST_NOTIFY_DELAY_MS = 2 * VERSIONS_TTL_MS;
/** How often a CONTINUOUS rollout looks for devices that joined its target. */
const JOIN_INTERVAL_MS = 2_000;
const MAX_TARGET_DEVICES = 10_000;
/** `Device.executions`: the latest this many per device. */
const EXECUTIONS_PER_DEVICE = 20;
const SHA256 = /^[0-9a-fA-F]{64}$/;

/** A claimed execution to notify; `resend`: a stale claim of a sender that died, sent again under its requestId. */
interface Dispatch {
  row: ExecutionRow;
  resend: boolean;
}

/** A report's or a status's effect on executions: which rollouts moved. */
type Moved = Set<string>;

/**
 * Rollouts: durable campaigns with one execution per targeted device, driven
 * by {@link tick} (the scheduler calls it for every active rollout) and moved
 * by device reports ({@link onProgress}, {@link onStatus}) from any instance.
 * Every execution change goes through the pure state machine
 * (execution.machine.ts) and is written compare-and-set, so instances and
 * the scheduler never overwrite each other.
 */
/** A rollout of at most this many devices is held whole by the report filter (about 100 bytes a name). */
const MEMBER_SET_MAX = 100_000;

export class RolloutService {
  readonly #now: () => number;
  /** Per product: target versions with executions that may move, so a report of any other version costs nothing here. */
  readonly #versions: LRUCache<string, Set<string>>;
  /** Last device state this instance wrote per execution: a repeated DOWNLOADING report needs no query. */
  /**
   * `<product>/<device>/<version>` → the device's executions in progress as
   * this instance last read or wrote them: a report the machine finds
   * changes nothing in them (a repeated DOWNLOADING) costs no query. Kept a
   * few seconds: another instance's change (a timeout, a retry) shows within
   * that, and the scheduler's catch-up covers what a stale entry skipped.
   */
  readonly #running = new LRUCache<string, RunningExecution[]>({ ...upTo(50_000), ttl: 5_000 });
  readonly #joinedAt = new Map<string, number>();
  /** `<rolloutId>/<device>` → whether the device is in the rollout, for `otaProgressChanged(rolloutId)`. */
  /** The devices of rollouts watched by a report filter, read whole (a CONTINUOUS rollout's joiners within the TTL); null past MEMBER_SET_MAX. */
  readonly #memberSets = new LRUCache<string, { names: Set<string> | null }>({
    max: 64,
    ttl: 5_000,
    ignoreFetchAbort: true,
    fetchMethod: async (id) => ({ names: await this.repo.memberNames(id, MEMBER_SET_MAX) }),
  });
  /** Membership one device at a time, for rollouts too large to hold whole. */
  readonly #members = new LRUCache<string, boolean>({
    ...upTo(100_000),
    ttl: 5_000,
    ignoreFetchAbort: true,
    fetchMethod: async (key) => {
      const [id, deviceName] = key.split("|") as [string, string];
      return this.repo.isMember(id, deviceName);
    },
  });

  constructor(
    private readonly repo: RolloutRepository,
    private readonly commands: CommandPublisher,
    private readonly sessions: DeviceSessions,
    private readonly progress: Pick<ProgressStore, "getMany">,
    private readonly options: RolloutServiceOptions,
  ) {
    this.#now = options.now ?? Date.now;
    this.#versions = new LRUCache<string, Set<string>>({
      ...upTo(10_000),
      ttl: VERSIONS_TTL_MS,
      // A change forgets the entry while a read may be under way: that read still answers (lru-cache would reject it).
      ignoreFetchAbort: true,
      fetchMethod: async (productName) => new Set(await this.repo.versionsInPlay(productName)),
    });
  }

  // ---- creating and reading -------------------------------------------------------------------

  /** What `create` would do, without doing anything. */
  async preview(input: RolloutInput): Promise<RolloutPlan & { productName: string; firmware: RolloutFirmware; policy: RolloutPolicy }> {
    const checked = await this.#checkInput(input);
    const devices = await this.repo.targetDevices(checked.productName, checked.target);
    this.#checkDevicesExist(checked.target, devices.length);
    return { ...planRollout(devices, checked.firmware.version, checked.policy, this.#now()), ...checked };
  }

  async create(input: RolloutInput): Promise<Rollout> {
    const checked = await this.#checkInput(input);
    const now = this.#now();
    const devices = await this.repo.targetDevices(checked.productName, checked.target);
    this.#checkDevicesExist(checked.target, devices.length);
    const plan = planRollout(devices, checked.firmware.version, checked.policy, now);
    const state: RolloutState = checked.policy.startAt !== null && checked.policy.startAt > now ? "SCHEDULED" : "RUNNING";
    const rollout = await this.repo.insert({ ...checked, state, executions: plan.executions });
    this.#versions.delete(rollout.productName);
    this.options.signals.changed(rollout.id, rollout.productName);
    this.options.wake();
    this.options.log.info({ rolloutId: rollout.id, productName: rollout.productName, targeted: plan.targeted, eligible: plan.eligible }, "rollout created");
    return rollout;
  }

  async get(id: string): Promise<Rollout> {
    const rollout = await this.find(id);
    if (!rollout) throw new AppError(ErrorCode.NOT_FOUND, `rollout ${id} not found`);
    return rollout;
  }

  find(id: string): Promise<Rollout | null> {
    return isUuid(id) ? this.repo.find(id) : Promise.resolve(null);
  }

  async list(productName: string, states: readonly RolloutState[] | null, first: number | null, after: string | null) {
    requireName("productName", productName);
    const limit = first ?? 50;
    // Each rollout of a page may ask for its counts (a GROUP BY over its executions).
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw badInput("first", "must be 1..100");
    const page = await this.repo.list(productName, states ?? null, limit, after == null ? null : decodeCreatedCursor(after));
    return { edges: page.rows.map((r) => ({ cursor: encodeCreatedCursor(r), rollout: r })), hasNextPage: page.hasNextPage };
  }

  async counts(id: string): Promise<ExecutionCounts> {
    return toCounts(await this.repo.counts(id));
  }

  /** Counts of many rollouts in one query, in the order asked. */
  async countsOfMany(ids: readonly string[]): Promise<ExecutionCounts[]> {
    const valid = ids.filter(isUuid);
    const rows = valid.length > 0 ? await this.repo.countsOfMany(valid) : new Map<string, CountRow[]>();
    return ids.map((id) => toCounts(rows.get(id) ?? []));
  }

  /**
   * For `otaProgressChanged(rolloutId)`: whether a report is one of the
   * rollout's devices about its version. Membership is read per device and
   * kept a few seconds (a CONTINUOUS rollout gains devices).
   */
  async reportFilter(id: string, productName: string): Promise<(record: ProgressRecord) => Promise<boolean>> {
    const rollout = await this.get(id);
    if (rollout.productName !== productName) throw badInput("rolloutId", "the rollout is of another product");
    const version = rollout.firmware.version;
    return async (record) => {
      if (record.version !== version) return false;
      // One read of the whole rollout serves every report for a while: a read per device, one report at a time,
      // let a 10,000-device rollout's subscribers fall behind and drop most reports (subscriber_overflow).
      const members = (await this.#memberSets.fetch(id))?.names;
      if (members) return members.has(record.deviceName);
      return (await this.#members.fetch(`${id}|${record.deviceName}`)) ?? false;
    };
  }

  /** The rollout and its counts now. */
  async snapshot(id: string): Promise<RolloutSnapshot> {
    const rollout = await this.get(id);
    return { rollout, counts: await this.counts(id) };
  }

  async executions(id: string, states: readonly ExecutionState[] | null, first: number | null, after: string | null) {
    const limit = first ?? 50;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw badInput("first", "must be 1..1000");
    if (after != null) requireName("deviceName", after);
    const page = await this.repo.page(id, states ?? null, limit, after ?? null);
    return page;
  }

  /** The latest executions of these devices (newest rollout first, at most 20 each), grouped by device: one query for a page. */
  async executionsOfDevices(productName: string, deviceNames: readonly string[]): Promise<Map<string, ExecutionRow[]>> {
    const byDevice = new Map<string, ExecutionRow[]>(deviceNames.map((d) => [d, []]));
    for (const row of await this.repo.ofDevices(productName, deviceNames, EXECUTIONS_PER_DEVICE)) byDevice.get(row.deviceName)?.push(row);
    return byDevice;
  }

  // ---- operator actions -----------------------------------------------------------------------

  /** Stops notifying; devices already notified finish and are recorded. */
  async pause(id: string): Promise<Rollout> {
    return this.#setState(id, "PAUSED", ["RUNNING", "SCHEDULED"]);
  }

  /** Back to RUNNING, or to SCHEDULED when it was paused before its start time. */
  async resume(id: string): Promise<Rollout> {
    const rollout = await this.get(id);
    const waiting = rollout.startedAt === null && rollout.policy.startAt !== null && rollout.policy.startAt > this.#now();
    return this.#setState(id, waiting ? "SCHEDULED" : "RUNNING", ["PAUSED"]);
  }

  /**
   * Ends the rollout: queued executions are CANCELED, and so are notified
   * ones whose command was still queued for an offline device and could be
   * withdrawn (embedded broker); those already delivered run to their end.
   */
  async cancel(id: string): Promise<Rollout> {
    const rollout = await this.#setState(id, "CANCELED", ACTIVE_ROLLOUT, { finishedAt: this.#now() });
    await this.#cancelExecutions(rollout, true);
    return rollout;
  }

  /** Queues the failed executions of these classes (all when empty) again, and runs the rollout if it had ended. */
  async retry(id: string, failureClasses: readonly FailureClass[] | null): Promise<{ rollout: Rollout; requeued: number }> {
    await this.get(id);
    const classes = failureClasses == null || failureClasses.length === 0 ? FAILURE_CLASSES : failureClasses;
    // Under the rollout's lock, waiting for a scheduler pass to finish: a pass of the ended rollout would cancel what
    // is queued again before the state says it runs.
    const locked = await this.repo.withLock(
      id,
      async (rollout, tx) => {
        if (rollout.state === "CANCELED") throw new AppError(ErrorCode.BAD_USER_INPUT, "a canceled rollout cannot be retried", "id");
        // Under the artifact's lock too: it cannot be deleted from under the retried rollout.
        const { firmwareId } = rollout.firmware;
        if (firmwareId !== undefined && !(await this.repo.holdArtifact(firmwareId, tx))) {
          throw new AppError(ErrorCode.BAD_USER_INPUT, `the rollout's firmware artifact ${firmwareId} was deleted: create a new rollout`, "id");
        }
        const now = this.#now();
        let requeued = 0;
        for (;;) {
          // After an abort, the devices it canceled before their wave are the rest of the rollout: taken up again too.
          const rows = [
            ...(await this.repo.byStates(id, ["FAILED", "TIMED_OUT"], PASS_LIMIT * 4, classes, tx)),
            ...(rollout.state === "ABORTED" ? await this.repo.byStates(id, ["CANCELED"], PASS_LIMIT * 4, undefined, tx) : []),
          ];
          // Not notified before every instance's ingest knows the rollout is in play again.
          const updates = this.#decide(rollout, rows, { type: "retry" }, now).map((u) => ({ ...u, next: { ...u.next, notBefore: now + FIRST_NOTIFY_DELAY_MS } }));
          const written = await this.repo.write(id, updates, tx);
          requeued += written.size;
          if (written.size === 0) break;
        }
        const ended = rollout.state === "COMPLETED" || rollout.state === "ABORTED";
        const current = requeued > 0 && ended ? await this.repo.update(id, { state: "RUNNING", finishedAt: null, abortedBy: null }, undefined, tx) : rollout;
        return { rollout: current ?? rollout, requeued };
      },
      { wait: true },
    );
    if (!locked) throw new AppError(ErrorCode.NOT_FOUND, `rollout ${id} not found`);
    this.#versions.delete(locked.value.rollout.productName);
    this.options.signals.changed(id, locked.value.rollout.productName);
    this.options.wake();
    return locked.value;
  }

  async #setState(id: string, state: RolloutState, from: readonly RolloutState[], extra: Partial<Rollout> = {}): Promise<Rollout> {
    const current = await this.get(id);
    const updated = await this.repo.update(id, { state, ...extra }, from);
    if (!updated) {
      throw new AppError(ErrorCode.BAD_USER_INPUT, `the rollout is ${current.state}; this needs it ${from.join(" or ")}`, "id");
    }
    this.options.signals.changed(id, updated.productName);
    this.options.wake();
    return updated;
  }

  // ---- device reports (ingest, any instance) --------------------------------------------------

  /**
   * A stored progress report moves the device's execution in a rollout of
   * that version. Costs nothing unless a rollout of the report's version is
   * in play for the product; a report that changes nothing is absorbed in
   * memory ({@link #running}). Idempotent.
   */
  async onProgress(record: ProgressRecord): Promise<void> {
    if (!(await this.#inPlay(record.productName, record.version))) return;
    const event = progressEvent(record);
    const key = `${record.productName}/${record.deviceName}/${record.version}`;
    const cached = this.#running.get(key);
    const now = this.#now();
    if (cached?.every((row) => !transition(row.execution, event, policyIn(row.rolloutState, row.policy), row.targetVersion, now).changed)) return;
    await this.#apply(record.productName, record.deviceName, record.version, event, key);
  }

  /** A stored `update_status` with `firmware_ver` completes (or, after DOWNLOADED, rolls back) the device's running execution. */
  async onStatus(productName: string, deviceName: string, firmwareVersion: string | undefined): Promise<void> {
    if (firmwareVersion === undefined) return;
    const versions = await this.#versions.fetch(productName);
    if (!versions || versions.size === 0) return;
    await this.#apply(productName, deviceName, null, { type: "status", firmwareVersion }, null);
  }

  /** Another instance changed a rollout of the product: its versions in play are read again. */
  forgetVersions(productName: string): void {
    this.#versions.delete(productName);
  }

  async #inPlay(productName: string, version: string): Promise<boolean> {
    return (await this.#versions.fetch(productName))?.has(version) ?? false;
  }

  async #apply(productName: string, deviceName: string, version: string | null, event: ExecutionEvent, key: string | null): Promise<void> {
    const moved: Moved = new Set();
    for (let attempt = 0; attempt < 5; attempt++) {
      const running = await this.repo.running(productName, deviceName, version);
      // What this instance knows after the writes below (claims being sent are not kept: their sender moves them).
      const known: RunningExecution[] = [];
      let conflict = false;
      for (const row of running) {
        const now = this.#now();
        const policy = policyIn(row.rolloutState, row.policy);
        // A status moves executions of any version: what progress reports of each remember is stale now.
        if (key === null) this.#running.delete(`${productName}/${deviceName}/${row.targetVersion}`);
        // A device may answer before its sender recorded the broker's confirmation: notified first.
        let execution = row.execution;
        if (execution.state === "QUEUED" && row.dispatchRequestId !== null) {
          const notified = transition(execution, { type: "notified", requestId: row.dispatchRequestId }, policy, row.targetVersion, now);
          if (notified.changed) execution = notified.next;
        }
        const t = transition(execution, event, policy, row.targetVersion, now);
        const next = t.changed ? t.next : execution;
        if (next === row.execution) {
          if (row.dispatchRequestId === null) known.push(row);
          continue;
        }
        const dispatch = row.execution.state === "QUEUED" && row.dispatchRequestId !== null ? { requestId: null } : undefined;
        const written = await this.repo.write(row.rolloutId, [{ deviceName, seq: row.seq, next, ...(dispatch && { dispatch }) }]);
        if (written.size === 0) {
          conflict = true;
          continue;
        }
        moved.add(row.rolloutId);
        known.push({ ...row, execution: next, seq: row.seq + 1, dispatchRequestId: null });
      }
      // Only executions still in progress: a device answering a new attempt after a final one must reach the database.
      if (key !== null && !conflict) {
        const inProgress = known.filter((r) => IN_PROGRESS.includes(r.execution.state));
        if (inProgress.length > 0 && inProgress.length === known.length) this.#running.set(key, inProgress);
        else this.#running.delete(key);
      }
      if (!conflict) break;
    }
    for (const id of moved) this.options.signals.changed(id, productName);
  }

  // ---- the scheduler's pass -------------------------------------------------------------------

  /**
   * One pass over an active rollout, holding its row lock (another instance
   * skips it meanwhile): start it when due, take in joiners, time out silent
   * executions, open waves, apply abort rules, complete it, and claim the
   * next devices to notify within the pacing. The commands go out after the
   * lock is released, under requestIds recorded first: a crash between the
   * two re-sends the same command (same requestId) once it is stale, never a
   * second attempt. Returns whether the rollout is still active.
   */
  async tick(id: string): Promise<boolean> {
    const now = this.#now();
    const locked = await this.repo.withLock(id, async (rollout, tx) => {
      let changed = false;
      // Executions silent for a while catch up on what their device stored (a report ingest could not apply), and
      // time out (or are queued again by their retry rule) when silent for the timeout; in an ended rollout too,
      // whose notified devices still finish or time out.
      const silent = await this.repo.silentSince(id, now - catchUpMs(rollout.policy), PASS_LIMIT, tx);
      if (silent.length > 0) changed ||= (await this.repo.write(id, await this.#catchUp(rollout, silent, now), tx)).size > 0;
      if (!ACTIVE_ROLLOUT.includes(rollout.state)) {
        // Ended: what is still queued is canceled (again, after a crash or an outage halfway through the cancel).
        this.#joinedAt.delete(id);
        const queued = await this.repo.byStates(id, ["QUEUED"], PASS_LIMIT, undefined, tx);
        const canceled = this.#decide(rollout, queued, { type: "cancel", withdrawn: false }, now).map((u) => ({ ...u, dispatch: { requestId: null } }));
        if (canceled.length > 0) changed ||= (await this.repo.write(id, canceled, tx)).size > 0;
        return { rollout, send: [] as Dispatch[], changed, active: false };
      }
      const patch: Partial<Rollout> = {};
      let state = rollout.state;
      if (state === "SCHEDULED" && (rollout.policy.startAt === null || rollout.policy.startAt <= now)) {
        state = patch.state = "RUNNING";
        patch.startedAt = now;
      }
      if (rollout.state !== "SCHEDULED" && rollout.startedAt === null) patch.startedAt = rollout.createdAt;

      if (rollout.membership === "CONTINUOUS" && now - (this.#joinedAt.get(id) ?? 0) >= JOIN_INTERVAL_MS) {
        this.#joinedAt.set(id, now);
        const joiners = await this.repo.targetDevices(rollout.productName, rollout.target, id, tx);
        if (joiners.length > 0) {
          const lastWave = Math.max(0, rollout.policy.waves.length - 1);
          const added = await this.repo.addExecutions(
            id,
            rollout.productName,
            joiners.map((d) => ({ deviceName: d.deviceName, wave: lastWave, execution: newExecution(d, rollout.firmware.version, rollout.policy, now) })),
            tx,
          );
          changed ||= added > 0;
        }
      }

      // Waves, abort rules, completion: from the counts.
      const rows = await this.repo.counts(id, tx);
      const waves = Math.max(1, rollout.policy.waves.length);
      let openWave = rollout.openWave;
      let readyAt = rollout.waveReadyAt;
      let abortedBy: AbortCause | null = null;
      while (openWave < waves - 1 && state !== "SCHEDULED") {
        const spec = rollout.policy.waves[openWave];
        if (!spec) break;
        const gate = waveGate(waveCounts(rows, openWave), spec, readyAt, now);
        if (gate.open) {
          openWave++;
          readyAt = null;
          continue;
        }
        readyAt = gate.readyAt;
        if (gate.unreachable) {
          const w = waveCounts(rows, openWave);
          abortedBy = { kind: "WAVE_GATE", wave: openWave, succeeded: w.succeeded, eligible: w.eligible, successRatio: spec.successRatio };
        }
        break;
      }
      if (openWave !== rollout.openWave) patch.openWave = openWave;
      if (readyAt !== rollout.waveReadyAt) patch.waveReadyAt = readyAt;
      const counts = toCounts(rows);
      const fired = abortCheck(
        { finished: counts.byState.SUCCEEDED + counts.byState.FAILED + counts.byState.TIMED_OUT, failedByClass: counts.byFailureClass },
        rollout.policy.abortRules,
      );
      if (fired) abortedBy = { kind: "ABORT_RULE", ...fired };
      if (abortedBy) {
        state = patch.state = "ABORTED";
        patch.abortedBy = abortedBy;
        patch.finishedAt = now;
      } else if (
        rollout.membership === "SNAPSHOT" &&
        state === "RUNNING" &&
        openWave === waves - 1 &&
        counts.byState.QUEUED + IN_PROGRESS.reduce((n, s) => n + counts.byState[s], 0) === 0
      ) {
        state = patch.state = "COMPLETED";
        patch.finishedAt = now;
      }

      // The next devices to notify, and commands whose sender died before recording the broker's answer.
      let send: Dispatch[] = [];
      if (state === "RUNNING" && inWindow(rollout.policy.maintenanceWindow, now) && now >= rollout.createdAt + FIRST_NOTIFY_DELAY_MS) {
        await this.repo.lockClaims(rollout.productName, tx);
        const stale = await this.repo.staleDispatches(id, now - 2 * this.options.publishTimeoutMs, PASS_LIMIT, tx);
        const pacing = await this.repo.pacing(id, now - 60_000, tx);
        const allowance = Math.min(PASS_LIMIT, notifyAllowance(rollout.policy, pacing.inProgress, pacing.notifiedSince));
        const claims: Parameters<RolloutRepository["write"]>[1][number][] = [];
        if (allowance > 0) {
          for (const { row, device } of await this.repo.notifiable(id, openWave, now, allowance, tx)) {
            if (device === null) {
              const t = transition(row.execution, { type: "skip", reason: "DEVICE_DELETED" }, rollout.policy, rollout.firmware.version, now);
              if (t.changed) claims.push({ deviceName: row.deviceName, seq: row.seq, next: t.next });
              continue;
            }
            // Guards again, on the version the device reports now (a wave can open hours after creation).
            const fresh = newExecution(device, rollout.firmware.version, rollout.policy, now);
            if (fresh.state === "SKIPPED" && fresh.skipReason !== null) {
              const t = transition(row.execution, { type: "skip", reason: fresh.skipReason }, rollout.policy, rollout.firmware.version, now);
              if (t.changed) claims.push({ deviceName: row.deviceName, seq: row.seq, next: { ...t.next, fromVersion: device.firmwareVersion } });
              continue;
            }
            const requestId = newObjectId();
            claims.push({ deviceName: row.deviceName, seq: row.seq, next: { ...row.execution, fromVersion: device.firmwareVersion }, dispatch: { requestId, at: now } });
            send.push({ row: { ...row, dispatchRequestId: requestId, dispatchedAt: now, seq: row.seq + 1 }, resend: false });
          }
        }
        const written = await this.repo.write(id, claims, tx);
        send = send.filter((d) => written.has(d.row.deviceName));
        changed ||= written.size > 0;
        // Re-sent as they were: the same requestId, a fresh claim time so that only one sender takes them.
        const resent = await this.repo.write(
          id,
          stale.map((r) => ({ deviceName: r.deviceName, seq: r.seq, next: r.execution, dispatch: { requestId: r.dispatchRequestId, at: now } })),
          tx,
        );
        for (const r of stale) if (resent.has(r.deviceName)) send.push({ row: { ...r, seq: r.seq + 1, dispatchedAt: now }, resend: true });
      }

      let current = rollout;
      if (Object.keys(patch).length > 0) {
        current = (await this.repo.update(id, patch, undefined, tx)) ?? rollout;
        changed = true;
      }
      return { rollout: current, send, changed, active: ACTIVE_ROLLOUT.includes(current.state) };
    });
    if (!locked) return true; // another instance has it this time
    const { rollout, send, changed, active } = locked.value;
    if (rollout.state === "ABORTED" && changed) {
      this.options.log.warn({ rolloutId: id, abortedBy: rollout.abortedBy }, "rollout aborted");
      await this.#cancelExecutions(rollout, false);
    }
    if (rollout.state === "COMPLETED" && changed) this.options.log.info({ rolloutId: id }, "rollout completed");
    const sent = await this.#send(rollout, send);
    if (changed || sent) this.options.signals.changed(id, rollout.productName);
    return active;
  }

  /**
   * Silent executions: a device report stored but not applied to its
   * execution (ingest could not reach PostgreSQL) is applied now from the
   * stored progress of this attempt and the device's latest `firmware_ver`;
   * those silent for the whole timeout time out.
   */
  async #catchUp(rollout: Rollout, silent: { row: ExecutionRow; firmwareVersion: string | null; statusAt: number | null }[], now: number) {
    const target = rollout.firmware.version;
    const policy = policyIn(rollout.state, rollout.policy);
    const timeoutMs = policy.inProgressTimeoutSeconds * 1000;
    const records = await this.progress.getMany(rollout.productName, silent.map((s) => s.row.deviceName));
    const updates: Parameters<RolloutRepository["write"]>[1][number][] = [];
    silent.forEach(({ row, firmwareVersion, statusAt }, i) => {
      const x = row.execution;
      const record = records[i];
      // The attempt began when its command was claimed: the device cannot have answered it before.
      const attemptAt = row.dispatchedAt ?? x.attempts.at(-1)?.notifiedAt ?? 0;
      let t: ReturnType<typeof transition> = { changed: false, why: "nothing stored" };
      // The machine decides what a report changes (progress never goes backwards; a rollback only after DOWNLOADED).
      if (record && record.version === target && record.receivedAt >= attemptAt) t = transition(x, progressEvent(record), policy, target, record.receivedAt);
      // A status of this attempt: the target completes it; another version is a rollback only if it came after DOWNLOADED.
      const current = t.changed ? t.next : x;
      if (firmwareVersion !== null && statusAt !== null && statusAt >= attemptAt && (firmwareVersion === target || statusAt > current.lastEventAt)) {
        const status = transition(current, { type: "status", firmwareVersion }, policy, target, now);
        if (status.changed) t = status;
      }
      if (!t.changed && now - x.lastEventAt >= timeoutMs) t = transition(x, { type: "timeout" }, policy, target, now);
      if (t.changed) updates.push({ deviceName: row.deviceName, seq: row.seq, next: t.next });
    });
    return updates;
  }

  /**
   * Sends the claimed commands and records each confirmation; returns whether
   * any execution moved. The first broker failure halts the pass, and so does
   * a claim older than PUBLISH_TIMEOUT_MS (a slow broker): what is left is
   * released for a later pass, never sent late beside another instance's
   * re-send. Re-sent claims are kept, to go again under their requestId.
   */
  async #send(rollout: Rollout, dispatches: readonly Dispatch[]): Promise<boolean> {
    let moved = false;
    let halted = false;
    const queue = [...dispatches];
    // Confirmations are written a batch at a time: one statement for many devices.
    const sent: ExecutionRow[] = [];
    const flush = async () => {
      const batch = sent.splice(0);
      if (batch.length > 0 && (await this.#confirmMany(rollout, batch))) moved = true;
    };
    const worker = async () => {
      for (let d = queue.shift(); d !== undefined; d = queue.shift()) {
        const late = this.#now() - (d.row.dispatchedAt ?? 0) > this.options.publishTimeoutMs;
        if (halted || late) {
          if (!d.resend) await this.#release(rollout, d.row);
          continue;
        }
        const outcome = await this.#sendOne(rollout, d);
        if (outcome.sent) sent.push(d.row);
        if (outcome.brokerFailed) halted = true;
        if (sent.length >= SEND_CONCURRENCY) await flush();
      }
    };
    await Promise.all(Array.from({ length: Math.min(SEND_CONCURRENCY, queue.length) }, worker));
    await flush();
    return moved;
  }

  /** Publishes one claimed command; `sent`: it went to the broker (confirmed, or perhaps on its way). */
  async #sendOne(rollout: Rollout, { row, resend }: Dispatch): Promise<{ sent: boolean; brokerFailed: boolean }> {
    const requestId = row.dispatchRequestId as string;
    const now = this.#now();
    const expiresAt = Math.floor((now + rollout.policy.inProgressTimeoutSeconds * 1000) / 1000);
    const topic = buildCommandTopic({
      target: { productName: rollout.productName, deviceName: row.deviceName },
      command: "$ota_upgrade",
      encoding: "plain",
      requestId,
      expiresAt,
    });
    const { version, size, md5, type, sha256, firmwareId } = rollout.firmware;
    const url =
      firmwareId === undefined
        ? rollout.firmware.url
        : this.options.artifacts.firmwareFor({ id: firmwareId, ...rollout.firmware }, { kind: "device", name: row.deviceName }, expiresAt).url;
    try {
      await this.commands.publishCommand(topic, JSON.stringify({ url, version, size, md5, type, sha256 }));
      return { sent: true, brokerFailed: false };
    } catch (err) {
      if (err instanceof AppError && err.code === ErrorCode.BROKER_UNAVAILABLE) {
        // Nothing was sent this time. A first send's claim goes, and a later pass notifies the device; a re-sent
        // claim stays (its sender may have delivered it before dying): sent again under the same requestId once stale.
        if (!resend) await this.#release(rollout, row);
        return { sent: false, brokerFailed: true };
      }
      // COMMAND_UNCONFIRMED: it may still arrive; recorded as notified, the timeout covers it if it never does.
      this.options.log.warn({ err, rolloutId: rollout.id, deviceName: row.deviceName }, "rollout command not confirmed by the broker");
      return { sent: true, brokerFailed: true };
    }
  }

  /** Records the broker's confirmations in one write; a row moved meanwhile (its device answered first, a cancel) is read again. */
  async #confirmMany(rollout: Rollout, rows: readonly ExecutionRow[]): Promise<boolean> {
    const now = this.#now();
    const updates = rows.flatMap((row) => {
      const t = transition(row.execution, { type: "notified", requestId: row.dispatchRequestId as string }, rollout.policy, rollout.firmware.version, now);
      return t.changed ? [{ deviceName: row.deviceName, seq: row.seq, next: t.next, dispatch: { requestId: null } }] : [];
    });
    const written = await this.repo.write(rollout.id, updates);
    let moved = written.size > 0;
    for (const row of rows) {
      if (!written.has(row.deviceName) && (await this.#confirm(rollout, row.deviceName, row.dispatchRequestId as string))) moved = true;
    }
    return moved;
  }

  /** Gives up a claim that was not sent: a later pass notifies the device under a new requestId. */
  async #release(rollout: Rollout, row: ExecutionRow): Promise<void> {
    await this.repo
      .write(rollout.id, [{ deviceName: row.deviceName, seq: row.seq, next: row.execution, dispatch: { requestId: null } }])
      .catch((err: unknown) => this.options.log.warn({ err, rolloutId: rollout.id }, "could not release a claim; it is re-sent once stale"));
  }

  /** Records that the broker took the command; a device that already answered moved it past QUEUED, which is fine. */
  async #confirm(rollout: Rollout, deviceName: string, requestId: string): Promise<boolean> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const [row] = (await this.repo.running(rollout.productName, deviceName, rollout.firmware.version)).filter((r) => r.rolloutId === rollout.id);
      if (!row || row.dispatchRequestId !== requestId) {
        await this.#withdrawIfCanceled(rollout, deviceName, requestId);
        return false;
      }
      const t = transition(row.execution, { type: "notified", requestId }, rollout.policy, rollout.firmware.version, this.#now());
      if (!t.changed) return false;
      const written = await this.repo.write(rollout.id, [{ deviceName, seq: row.seq, next: t.next, dispatch: { requestId: null } }]);
      if (written.size > 0) return true;
    }
    return false;
  }

  /** A command that went out for an execution canceled meanwhile is taken back if still queued. */
  async #withdrawIfCanceled(rollout: Rollout, deviceName: string, requestId: string): Promise<void> {
    const row = await this.repo.findExecution(rollout.id, deviceName);
    if (row?.execution.state === "CANCELED") await this.sessions.withdraw(rollout.productName, deviceName, [requestId]);
  }

  /**
   * Cancels the queued executions and, when `withdraw`, the notified ones whose
   * command is still queued for an offline device (taken back from its session).
   */
  async #cancelExecutions(rollout: Rollout, withdraw: boolean): Promise<void> {
    const now = this.#now();
    for (;;) {
      const queued = await this.repo.byStates(rollout.id, ["QUEUED"], PASS_LIMIT * 4);
      const updates = this.#decide(rollout, queued, { type: "cancel", withdrawn: false }, now).map((u) => ({ ...u, dispatch: { requestId: null } }));
      const written = await this.repo.write(rollout.id, updates);
      // A claim being sent right now is taken back by its sender once it finds the execution canceled (#confirm).
      if (written.size === 0) break;
    }
    // Page by page, a few devices at a time: a rollout of 50,000 offline devices is withdrawn in bounded memory.
    for (let after: string | null = null; withdraw; ) {
      const page = await this.repo.page(rollout.id, ["NOTIFIED"], PASS_LIMIT, after);
      const queue = [...page.rows];
      const worker = async () => {
        for (let row = queue.shift(); row !== undefined; row = queue.shift()) {
          const requestId = row.execution.attempts.at(-1)?.requestId;
          if (requestId === undefined) continue;
          const withdrawn = await this.sessions.withdraw(rollout.productName, row.deviceName, [requestId]);
          if (withdrawn.length === 0) continue;
          const t = transition(row.execution, { type: "cancel", withdrawn: true }, rollout.policy, rollout.firmware.version, now);
          if (t.changed) await this.repo.write(rollout.id, [{ deviceName: row.deviceName, seq: row.seq, next: t.next }]);
        }
      };
      await Promise.all(Array.from({ length: WITHDRAW_CONCURRENCY }, worker));
      if (!page.hasNextPage) break;
      after = page.rows.at(-1)?.deviceName ?? null;
    }
    this.options.signals.changed(rollout.id, rollout.productName);
  }

  /** The machine's decision for each row; rows it leaves unchanged are left out. */
  #decide(rollout: Rollout, rows: readonly ExecutionRow[], event: ExecutionEvent, now: number) {
    const out: { deviceName: string; seq: number; next: ExecutionRow["execution"] }[] = [];
    for (const row of rows) {
      const t = transition(row.execution, event, rollout.policy, rollout.firmware.version, now);
      if (t.changed) out.push({ deviceName: row.deviceName, seq: row.seq, next: t.next });
    }
    return out;
  }

  // ---- input ----------------------------------------------------------------------------------

  async #checkInput(input: RolloutInput) {
    const productName = requireName("productName", input.productName);
    const name = input.name ?? "";
    if (typeof name !== "string" || name.length > 200 || /[\u0000-\u001f]/.test(name)) throw badInput("name", "must be at most 200 characters, no control characters");
    const { tag, deviceNames, wholeProduct } = input.target;
    const given = [tag != null, deviceNames != null, wholeProduct === true].filter(Boolean).length;
    if (given !== 1) throw badInput("target", "give exactly one of tag, deviceNames and wholeProduct: true");
    let target: RolloutTarget;
    if (tag != null) target = { kind: "TAG", tag: requireName("tag", tag) };
    else if (deviceNames != null) {
      if (deviceNames.length === 0 || deviceNames.length > MAX_TARGET_DEVICES) throw badInput("target.deviceNames", `must hold 1..${MAX_TARGET_DEVICES} names`);
      target = { kind: "DEVICES", deviceNames: [...new Set(deviceNames.map((d) => requireName("deviceName", d)))] };
    } else target = { kind: "PRODUCT" };
    const membership: Membership = input.membership ?? "SNAPSHOT";
    if (membership === "CONTINUOUS" && target.kind === "DEVICES") throw badInput("membership", "a list of devices is a SNAPSHOT target");
    const policy = checkPolicy(input.policy ?? {});
    if (!policy.ok) throw badInput(policy.reason, policy.message);
    return { productName, name, target, membership, firmware: await this.#firmwareOf(productName, input), policy: policy.value };
  }

  /** A rollout's firmware as given, or an artifact's (its url then the unsigned download path: each device gets it signed). */
  async #firmwareOf(productName: string, input: RolloutInput): Promise<RolloutFirmware> {
    if ((input.firmwareId != null) === (input.firmware != null)) throw badInput("firmwareId", "give exactly one of firmware and firmwareId");
    if (input.firmwareId != null) {
      const artifact = await this.options.artifacts.forProduct(productName, input.firmwareId);
      const { id, version, size, md5, type, sha256 } = artifact;
      return { url: this.options.artifacts.downloadPath(id), version, size, md5, type, sha256, firmwareId: id };
    }
    const given = input.firmware as Record<string, unknown>;
    const firmware = checkFirmware(given);
    if (!firmware.ok) throw badInput(`firmware.${firmware.reason}`, firmware.message);
    const sha256 = given.sha256;
    if (typeof sha256 !== "string" || !SHA256.test(sha256)) throw badInput("firmware.sha256", "must be 64 hexadecimal characters");
    return { ...firmware.value, sha256: sha256.toLowerCase() };
  }

  #checkDevicesExist(target: RolloutTarget, found: number): void {
    if (target.kind === "DEVICES" && found < target.deviceNames.length) {
      throw badInput("target.deviceNames", `${target.deviceNames.length - found} of the devices are not registered for this product`);
    }
  }
}

/**
 * How long an execution in progress may go without an event before the
 * scheduler looks at what its device stored: a little more than the machine's
 * refresh of a device that keeps reporting the same phase (a tenth of the timeout).
 */
function catchUpMs(policy: RolloutPolicy): number {
  return (policy.inProgressTimeoutSeconds * 1000) / 10 + 1_000;
}

/** An ended rollout notifies nobody again: its devices still in progress finish or fail, without retries. */
function policyIn(state: RolloutState, policy: RolloutPolicy): RolloutPolicy {
  return ACTIVE_ROLLOUT.includes(state) ? policy : { ...policy, retries: [] };
}

/** A stored progress report as a machine event (SUCCEEDED in Redis means the download had finished). */
function progressEvent(record: ProgressRecord): Extract<ExecutionEvent, { type: "progress" }> {
  return record.state === "FAILED"
    ? { type: "progress", phase: "FAILED", reason: record.failureReason }
    : { type: "progress", phase: record.state === "SUCCEEDED" ? "DOWNLOADED" : record.state };
}

/** The counts of one wave, for its gate. */
function waveCounts(rows: readonly CountRow[], wave: number) {
  let eligible = 0;
  let succeeded = 0;
  let final = 0;
  for (const r of rows) {
    if (r.wave !== wave || r.state === "SKIPPED" || r.state === "CANCELED") continue;
    eligible += r.n;
    if (r.state === "SUCCEEDED") succeeded += r.n;
    if (FINAL.includes(r.state)) final += r.n;
  }
  return { eligible, succeeded, final };
}

export function toCounts(rows: readonly CountRow[]): ExecutionCounts {
  const counts = emptyCounts();
  const waves = new Map<number, Record<ExecutionState, number>>();
  for (const r of rows) {
    if (!EXECUTION_STATES.includes(r.state)) continue;
    counts.total += r.n;
    counts.byState[r.state] += r.n;
    if (r.failureClass !== null && (r.state === "FAILED" || r.state === "TIMED_OUT")) counts.byFailureClass[r.failureClass] += r.n;
    if (r.skipReason !== null && r.state === "SKIPPED") counts.bySkipReason[r.skipReason] += r.n;
    if (r.state === "SKIPPED") continue;
    const wave = waves.get(r.wave) ?? emptyCounts().byState;
    wave[r.state] += r.n;
    waves.set(r.wave, wave);
  }
  counts.byWave = [...waves].sort(([a], [b]) => a - b).map(([wave, byState]) => ({ wave, byState }));
  return counts;
}
