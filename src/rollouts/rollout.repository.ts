import { and, desc, eq, getTableColumns, inArray, lt, or, sql, type SQL } from "drizzle-orm";
import { badInput } from "../errors.js";
import { lockArtifact } from "../firmware/artifact.repository.js";
import { rowsOf, type Db } from "../storage/database.js";
import { devices, rolloutExecutions, rollouts } from "../storage/schema.js";
import {
  ACTIVE_ROLLOUT,
  type AbortCause,
  type Attempt,
  type Execution,
  type ExecutionState,
  type FailureClass,
  type Membership,
  type Rollout,
  type RolloutFirmware,
  type RolloutPolicy,
  type RolloutState,
  type RolloutTarget,
  type SkipReason,
} from "./rollout.model.js";

/** One execution as stored: the machine's part, and what the scheduler keeps beside it. */
export interface ExecutionRow {
  rolloutId: string;
  productName: string;
  deviceName: string;
  wave: number;
  /** Compare-and-set token: a write applies only to the row it was decided on. */
  seq: number;
  /** QUEUED with this set: its command is being sent under this requestId. */
  dispatchRequestId: string | null;
  dispatchedAt: number | null;
  execution: Execution;
}

/** A device a rollout may target, as the registry has it now. */
export interface TargetDevice {
  deviceName: string;
  firmwareVersion: string | null;
  suspended: boolean;
}

/** A running execution's rollout, for matching reports: what the state machine needs of it. */
export interface RunningExecution extends ExecutionRow {
  targetVersion: string;
  policy: RolloutPolicy;
  rolloutState: RolloutState;
}

export interface CountRow {
  wave: number;
  state: ExecutionState;
  failureClass: FailureClass | null;
  skipReason: SkipReason | null;
  n: number;
}

type RolloutRow = typeof rollouts.$inferSelect;
type ExecutionDbRow = typeof rolloutExecutions.$inferSelect;

const ms = (d: Date | null) => (d === null ? null : d.getTime());

export function toRollout(row: RolloutRow): Rollout {
  return {
    id: row.id,
    productName: row.productName,
    name: row.name,
    target: row.target as unknown as RolloutTarget,
    membership: row.membership as Membership,
    firmware: row.firmware as unknown as RolloutFirmware,
    policy: row.policy as unknown as RolloutPolicy,
    state: row.state as RolloutState,
    openWave: row.openWave,
    waveReadyAt: ms(row.waveReadyAt),
    abortedBy: row.abortedBy as AbortCause | null,
    createdAt: row.createdAt.getTime(),
    startedAt: ms(row.startedAt),
    finishedAt: ms(row.finishedAt),
  };
}

function toExecutionRow(row: ExecutionDbRow): ExecutionRow {
  return {
    rolloutId: row.rolloutId,
    productName: row.productName,
    deviceName: row.deviceName,
    wave: row.wave,
    seq: row.seq,
    dispatchRequestId: row.dispatchRequestId,
    dispatchedAt: ms(row.dispatchedAt),
    execution: {
      state: row.state as ExecutionState,
      failureClass: row.failureClass as FailureClass | null,
      skipReason: row.skipReason as SkipReason | null,
      fromVersion: row.fromVersion,
      attempts: row.attempts as Attempt[],
      notBefore: ms(row.notBefore),
      lastEventAt: row.lastEventAt.getTime(),
    },
  };
}

const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
const firmwareVer = sql<string | null>`${devices.status}->>'firmware_ver'`;
const RUNNING: ExecutionState[] = ["NOTIFIED", "DOWNLOADING", "DOWNLOADED"];
/**
 * Rollouts whose executions may still move: active ones, and ended ones with
 * executions not final yet (devices notified before the end finish or time
 * out; queued ones are canceled).
 */
const inPlay = or(
  inArray(rollouts.state, [...ACTIVE_ROLLOUT]),
  // A claim being sent is QUEUED too: four probes of the (rollout, state) index per ended rollout.
  sql`exists (select 1 from ${rolloutExecutions} x where x.rollout_id = ${rollouts.id}
    and x.state in ('QUEUED', 'NOTIFIED', 'DOWNLOADING', 'DOWNLOADED'))`,
);
/** Rows per INSERT or batched UPDATE: bounded statements, whatever the rollout's size. */
const CHUNK = 1000;

/** PostgreSQL access for rollouts and their executions; no rules here, only queries. */
export class RolloutRepository {
  constructor(private readonly db: () => Db) {}

  async insert(row: {
    productName: string;
    name: string;
    target: RolloutTarget;
    membership: Membership;
    firmware: RolloutFirmware;
    policy: RolloutPolicy;
    state: RolloutState;
    executions: { deviceName: string; wave: number; execution: Execution }[];
  }): Promise<Rollout> {
    return this.db().transaction(async (tx) => {
      // A rollout of an artifact holds it: deleting it waits, then sees this rollout (or this insert finds it deleted).
      const { firmwareId } = row.firmware;
      if (firmwareId !== undefined && !(await this.holdArtifact(firmwareId, tx as unknown as Db))) {
        throw badInput("firmwareId", `firmware artifact ${firmwareId} was deleted meanwhile`);
      }
      const [inserted] = await tx
        .insert(rollouts)
        .values({
          productName: row.productName,
          name: row.name,
          target: row.target as unknown as Record<string, unknown>,
          membership: row.membership,
          firmware: row.firmware as unknown as Record<string, unknown>,
          policy: row.policy as unknown as Record<string, unknown>,
          state: row.state,
          // Milliseconds, as the API's cursors carry them (PostgreSQL would keep microseconds).
          createdAt: new Date(),
        })
        .returning();
      const rollout = toRollout(inserted as RolloutRow);
      await insertExecutions(tx as unknown as Db, rollout.id, rollout.productName, row.executions);
      return rollout;
    });
  }

  /** Locks the artifact until the transaction ends (see {@link lockArtifact}); false when it is gone. */
  async holdArtifact(firmwareId: string, db: Db): Promise<boolean> {
    return (await lockArtifact(db, firmwareId)) !== null;
  }

  /** Adds executions for devices that joined a CONTINUOUS rollout; a device already in it is left as it is. */
  addExecutions(
    rolloutId: string,
    productName: string,
    executions: { deviceName: string; wave: number; execution: Execution }[],
    db: Db = this.db(),
  ) {
    return insertExecutions(db, rolloutId, productName, executions);
  }

  async find(id: string): Promise<Rollout | null> {
    const [row] = await this.db().select().from(rollouts).where(eq(rollouts.id, id));
    return row ? toRollout(row) : null;
  }

  /** Newest first; keyset on (createdAt, id). */
  async list(productName: string, states: readonly RolloutState[] | null, first: number, after: { createdAt: number; id: string } | null) {
    const rows = await this.db()
      .select()
      .from(rollouts)
      .where(
        and(
          eq(rollouts.productName, productName),
          states == null ? undefined : inArray(rollouts.state, [...states]),
          after === null
            ? undefined
            : or(
                lt(rollouts.createdAt, new Date(after.createdAt)),
                and(eq(rollouts.createdAt, new Date(after.createdAt)), lt(rollouts.id, after.id)),
              ),
        ),
      )
      .orderBy(desc(rollouts.createdAt), desc(rollouts.id))
      .limit(first + 1);
    return { rows: rows.slice(0, first).map(toRollout), hasNextPage: rows.length > first };
  }

  /**
   * Ids of the rollouts a scheduler drives (see {@link inPlay}).
   */
  async activeIds(): Promise<string[]> {
    const rows = await this.db().select({ id: rollouts.id }).from(rollouts).where(inPlay);
    return rows.map((r) => r.id);
  }

  /** Target versions of the product's rollouts whose executions may still move (see {@link activeIds}). */
  async versionsInPlay(productName: string): Promise<string[]> {
    const rows = await this.db()
      .selectDistinct({ version: sql<string>`${rollouts.firmware}->>'version'` })
      .from(rollouts)
      .where(and(eq(rollouts.productName, productName), inPlay));
    return rows.map((r) => r.version);
  }

  /**
   * Runs `work` holding the rollout's row lock, or returns null at once when
   * another scheduler holds it (`FOR UPDATE SKIP LOCKED`): instances share the
   * work by rollout, and a dead instance's lock goes with its connection.
   * `wait`: waits for the lock instead (an operator's action); null only when there is no such rollout.
   */
  async withLock<T>(id: string, work: (rollout: Rollout, tx: Db) => Promise<T>, o: { wait?: boolean } = {}): Promise<{ value: T } | null> {
    return this.db().transaction(async (tx) => {
      const [row] = await tx
        .select()
        .from(rollouts)
        .where(eq(rollouts.id, id))
        .for("update", o.wait ? {} : { skipLocked: true });
      if (!row) return null;
      return { value: await work(toRollout(row), tx as unknown as Db) };
    });
  }

  async update(
    id: string,
    patch: Partial<Pick<Rollout, "state" | "openWave" | "waveReadyAt" | "abortedBy" | "startedAt" | "finishedAt">>,
    onlyFrom?: readonly RolloutState[],
    db: Db = this.db(),
  ): Promise<Rollout | null> {
    const set: Partial<typeof rollouts.$inferInsert> = {};
    if (patch.state !== undefined) set.state = patch.state;
    if (patch.openWave !== undefined) set.openWave = patch.openWave;
    if (patch.waveReadyAt !== undefined) set.waveReadyAt = patch.waveReadyAt === null ? null : new Date(patch.waveReadyAt);
    if (patch.abortedBy !== undefined) set.abortedBy = patch.abortedBy as unknown as Record<string, unknown> | null;
    if (patch.startedAt !== undefined) set.startedAt = patch.startedAt === null ? null : new Date(patch.startedAt);
    if (patch.finishedAt !== undefined) set.finishedAt = patch.finishedAt === null ? null : new Date(patch.finishedAt);
    const [row] = await db
      .update(rollouts)
      .set(set)
      .where(and(eq(rollouts.id, id), onlyFrom === undefined ? undefined : inArray(rollouts.state, [...onlyFrom])))
      .returning();
    return row ? toRollout(row) : null;
  }

  /** Executions per wave, state, failure class and skip reason. */
  async counts(rolloutId: string, db: Db = this.db()): Promise<CountRow[]> {
    const e = rolloutExecutions;
    const rows = await db
      .select({ wave: e.wave, state: e.state, failureClass: e.failureClass, skipReason: e.skipReason, n: sql<number>`count(*)::int` })
      .from(e)
      .where(eq(e.rolloutId, rolloutId))
      .groupBy(e.wave, e.state, e.failureClass, e.skipReason);
    return rows as CountRow[];
  }

  /** {@link counts} of many rollouts in one query. */
  async countsOfMany(rolloutIds: readonly string[]): Promise<Map<string, CountRow[]>> {
    const e = rolloutExecutions;
    const rows = await this.db()
      .select({ rolloutId: e.rolloutId, wave: e.wave, state: e.state, failureClass: e.failureClass, skipReason: e.skipReason, n: sql<number>`count(*)::int` })
      .from(e)
      .where(inArray(e.rolloutId, [...rolloutIds]))
      .groupBy(e.rolloutId, e.wave, e.state, e.failureClass, e.skipReason);
    const byId = new Map<string, CountRow[]>(rolloutIds.map((id) => [id, []]));
    for (const { rolloutId, ...row } of rows) byId.get(rolloutId)?.push(row as CountRow);
    return byId;
  }

  /** Executions in progress (dispatching included), and those notified since `since`: what pacing counts. */
  async pacing(rolloutId: string, since: number, db: Db = this.db()): Promise<{ inProgress: number; notifiedSince: number }> {
    const e = rolloutExecutions;
    const [row] = await db
      .select({
        inProgress: sql<number>`count(*) filter (where ${e.state} in ('NOTIFIED', 'DOWNLOADING', 'DOWNLOADED') or ${e.dispatchRequestId} is not null)::int`,
        notifiedSince: sql<number>`count(*) filter (where ${e.dispatchedAt} > ${new Date(since).toISOString()})::int`,
      })
      .from(e)
      .where(eq(e.rolloutId, rolloutId));
    return row ?? { inProgress: 0, notifiedSince: 0 };
  }

  /**
   * QUEUED executions that may be notified now, in wave then name order, with
   * their device as the registry has it (deleted: null). A device with an
   * execution in progress in another rollout waits: one upgrade at a time.
   */
  async notifiable(rolloutId: string, openWave: number, now: number, limit: number, db: Db = this.db()) {
    const e = rolloutExecutions;
    const other = sql`exists (select 1 from ${rolloutExecutions} o where o.product_name = ${e.productName}
      and o.device_name = ${e.deviceName} and o.rollout_id <> ${e.rolloutId}
      and (o.state in ('NOTIFIED', 'DOWNLOADING', 'DOWNLOADED') or o.dispatch_request_id is not null))`;
    const rows = await db
      .select({ row: e, firmwareVersion: firmwareVer, suspended: devices.suspended, exists: sql<boolean>`${devices.deviceName} is not null` })
      .from(e)
      .leftJoin(devices, and(eq(devices.productName, e.productName), eq(devices.deviceName, e.deviceName)))
      .where(
        and(
          eq(e.rolloutId, rolloutId),
          eq(e.state, "QUEUED"),
          sql`${e.dispatchRequestId} is null`,
          sql`${e.wave} <= ${openWave}`,
          sql`(${e.notBefore} is null or ${e.notBefore} <= ${new Date(now).toISOString()})`,
          sql`not ${other}`,
        ),
      )
      .orderBy(e.wave, e.deviceName)
      .limit(limit);
    return rows.map((r) => ({
      row: toExecutionRow(r.row),
      device: r.exists ? { deviceName: r.row.deviceName, firmwareVersion: r.firmwareVersion, suspended: r.suspended ?? false } : null,
    }));
  }

  /**
   * Serialises the claims of one product's rollouts until the transaction
   * ends (all instances): a device with a claim or an execution in progress
   * in one rollout is then seen by the next, which leaves it queued
   * ({@link notifiable}); without it two rollouts could claim one device at once.
   */
  async lockClaims(productName: string, db: Db): Promise<void> {
    await db.execute(sql`select pg_advisory_xact_lock(hashtext(${`iothub-ota rollout claims ${productName}`}))`);
  }

  /** Executions being sent since before `before`: their sender died or stalled; sent again under the same requestId. */
  async staleDispatches(rolloutId: string, before: number, limit: number, db: Db = this.db()): Promise<ExecutionRow[]> {
    const e = rolloutExecutions;
    const rows = await db
      .select()
      .from(e)
      .where(and(eq(e.rolloutId, rolloutId), eq(e.state, "QUEUED"), sql`${e.dispatchRequestId} is not null`, lt(e.dispatchedAt, new Date(before))))
      .limit(limit);
    return rows.map(toExecutionRow);
  }

  /** Executions in progress whose last event is older than `before`, with the device's `firmware_ver` now and when it came. */
  async silentSince(rolloutId: string, before: number, limit: number, db: Db = this.db()) {
    const e = rolloutExecutions;
    const rows = await db
      .select({ row: e, firmwareVersion: firmwareVer, statusAt: devices.statusAt })
      .from(e)
      .leftJoin(devices, and(eq(devices.productName, e.productName), eq(devices.deviceName, e.deviceName)))
      .where(and(eq(e.rolloutId, rolloutId), inArray(e.state, RUNNING), lt(e.lastEventAt, new Date(before))))
      // Oldest first: the next to time out are never crowded out by others.
      .orderBy(e.lastEventAt)
      .limit(limit);
    return rows.map((r) => ({ row: toExecutionRow(r.row), firmwareVersion: r.firmwareVersion, statusAt: ms(r.statusAt) }));
  }

  async byStates(
    rolloutId: string,
    states: readonly ExecutionState[],
    limit: number,
    failureClasses?: readonly FailureClass[],
    db: Db = this.db(),
  ): Promise<ExecutionRow[]> {
    const e = rolloutExecutions;
    const rows = await db
      .select()
      .from(e)
      .where(
        and(
          eq(e.rolloutId, rolloutId),
          inArray(e.state, [...states]),
          failureClasses === undefined ? undefined : inArray(e.failureClass, [...failureClasses]),
        ),
      )
      .orderBy(e.deviceName)
      .limit(limit);
    return rows.map(toExecutionRow);
  }

  async findExecution(rolloutId: string, deviceName: string): Promise<ExecutionRow | null> {
    const e = rolloutExecutions;
    const [row] = await this.db().select().from(e).where(and(eq(e.rolloutId, rolloutId), eq(e.deviceName, deviceName)));
    return row ? toExecutionRow(row) : null;
  }

  /** A page of a rollout's executions by device name. */
  async page(rolloutId: string, states: readonly ExecutionState[] | null, first: number, after: string | null) {
    const e = rolloutExecutions;
    const rows = await this.db()
      .select()
      .from(e)
      .where(
        and(
          eq(e.rolloutId, rolloutId),
          states == null ? undefined : inArray(e.state, [...states]),
          after == null ? undefined : sql`${e.deviceName} > ${after}`,
        ),
      )
      .orderBy(e.deviceName)
      .limit(first + 1);
    return { rows: rows.slice(0, first).map(toExecutionRow), hasNextPage: rows.length > first };
  }

  /** The latest `perDevice` executions of each of these devices, newest rollout first: one query for a whole page of devices. */
  async ofDevices(productName: string, deviceNames: readonly string[], perDevice: number): Promise<ExecutionRow[]> {
    if (deviceNames.length === 0) return [];
    const e = rolloutExecutions;
    const ranked = this.db()
      .select({
        ...getTableColumns(e),
        rank: sql<number>`row_number() over (partition by ${e.deviceName} order by ${rollouts.createdAt} desc)`.as("rank"),
        rolloutCreatedAt: sql<Date>`${rollouts.createdAt}`.as("rollout_created_at"),
      })
      .from(e)
      .innerJoin(rollouts, eq(rollouts.id, e.rolloutId))
      .where(and(eq(e.productName, productName), inArray(e.deviceName, [...deviceNames])))
      .as("ranked");
    const rows = await this.db()
      .select()
      .from(ranked)
      .where(sql`${ranked.rank} <= ${perDevice}`)
      .orderBy(desc(ranked.rolloutCreatedAt));
    return rows.map(({ rank: _rank, rolloutCreatedAt: _at, ...row }) => toExecutionRow(row as ExecutionDbRow));
  }

  /** The names of the rollout's devices, or null when it has more than `max`. */
  async memberNames(rolloutId: string, max: number): Promise<Set<string> | null> {
    const e = rolloutExecutions;
    const rows = await this.db().select({ d: e.deviceName }).from(e).where(eq(e.rolloutId, rolloutId)).limit(max + 1);
    return rows.length > max ? null : new Set(rows.map((r) => r.d));
  }

  async isMember(rolloutId: string, deviceName: string): Promise<boolean> {
    const e = rolloutExecutions;
    const [row] = await this.db().select({ d: e.deviceName }).from(e).where(and(eq(e.rolloutId, rolloutId), eq(e.deviceName, deviceName)));
    return row !== undefined;
  }

  /**
   * The device's executions a report can move: in progress, or being sent
   * (a device can answer before the sender recorded the broker's confirmation).
   * `version`: only rollouts of that target version.
   */
  async running(productName: string, deviceName: string, version: string | null): Promise<RunningExecution[]> {
    const e = rolloutExecutions;
    const rows = await this.db()
      .select({ e, firmware: rollouts.firmware, policy: rollouts.policy, state: rollouts.state })
      .from(e)
      .innerJoin(rollouts, eq(rollouts.id, e.rolloutId))
      .where(
        and(
          eq(e.productName, productName),
          eq(e.deviceName, deviceName),
          or(inArray(e.state, RUNNING), and(eq(e.state, "QUEUED"), sql`${e.dispatchRequestId} is not null`)),
          version === null ? undefined : sql`${rollouts.firmware}->>'version' = ${version}`,
        ),
      );
    return rows.map((r) => ({
      ...toExecutionRow(r.e),
      targetVersion: (r.firmware as unknown as RolloutFirmware).version,
      policy: r.policy as unknown as RolloutPolicy,
      rolloutState: r.state as RolloutState,
    }));
  }

  /** Devices the target matches now, with their version; `notIn`: only those without an execution in that rollout. */
  async targetDevices(productName: string, target: RolloutTarget, notIn?: string, db: Db = this.db()): Promise<TargetDevice[]> {
    const d = devices;
    const where: (SQL | undefined)[] = [eq(d.productName, productName)];
    if (target.kind === "TAG") where.push(sql`${d.tags} @> array[${target.tag}]::text[]`);
    if (target.kind === "DEVICES") where.push(inArray(d.deviceName, [...target.deviceNames]));
    if (notIn !== undefined) {
      where.push(
        sql`not exists (select 1 from ${rolloutExecutions} x where x.rollout_id = ${notIn} and x.device_name = ${d.deviceName})`,
      );
    }
    const rows = await db
      .select({ deviceName: d.deviceName, firmwareVersion: firmwareVer, suspended: d.suspended })
      .from(d)
      .where(and(...where))
      .orderBy(d.deviceName);
    return rows;
  }

  /**
   * Writes executions decided by the state machine, each only if its row is
   * still the one it was decided on (`seq`); returns the device names written.
   * One statement per chunk, however many.
   */
  async write(
    rolloutId: string,
    updates: readonly { deviceName: string; seq: number; next: Execution; dispatch?: { requestId: string | null; at?: number } }[],
    db: Db = this.db(),
  ): Promise<Set<string>> {
    const written = new Set<string>();
    for (let i = 0; i < updates.length; i += CHUNK) {
      const values = updates.slice(i, i + CHUNK).map((u) => ({
        device_name: u.deviceName,
        seq: u.seq,
        state: u.next.state,
        failure_class: u.next.failureClass,
        skip_reason: u.next.skipReason,
        attempts: u.next.attempts,
        not_before: iso(u.next.notBefore),
        last_event_at: iso(u.next.lastEventAt),
        set_dispatch: u.dispatch !== undefined,
        dispatch_request_id: u.dispatch?.requestId ?? null,
        dispatched_at: iso(u.dispatch?.at ?? null),
      }));
      const result = await db.execute<{ device_name: string }>(sql`
        update ${rolloutExecutions} e set
          state = v.state, failure_class = v.failure_class, skip_reason = v.skip_reason, attempts = v.attempts,
          not_before = v.not_before, last_event_at = v.last_event_at,
          dispatch_request_id = case when v.set_dispatch then v.dispatch_request_id else e.dispatch_request_id end,
          dispatched_at = coalesce(v.dispatched_at, e.dispatched_at),
          seq = e.seq + 1
        from jsonb_to_recordset(${JSON.stringify(values)}::jsonb) as v(
          device_name text, seq int, state text, failure_class text, skip_reason text, attempts jsonb,
          not_before timestamptz, last_event_at timestamptz, set_dispatch boolean, dispatch_request_id text, dispatched_at timestamptz)
        where e.rollout_id = ${rolloutId} and e.device_name = v.device_name and e.seq = v.seq
          -- The planner takes the function for 100 rows and would scan the rollout: the primary key, named
          -- (device names hold no comma).
          and e.device_name = any(string_to_array(${values.map((v) => v.device_name).join(",")}, ','))
        returning e.device_name`);
      for (const row of rowsOf<{ device_name: string }>(result)) written.add(row.device_name);
    }
    return written;
  }
}

async function insertExecutions(
  db: Db,
  rolloutId: string,
  productName: string,
  executions: readonly { deviceName: string; wave: number; execution: Execution }[],
): Promise<number> {
  let added = 0;
  for (let i = 0; i < executions.length; i += CHUNK) {
    const rows = executions.slice(i, i + CHUNK).map(({ deviceName, wave, execution: x }) => ({
      rolloutId,
      productName,
      deviceName,
      wave,
      state: x.state,
      failureClass: x.failureClass,
      skipReason: x.skipReason,
      fromVersion: x.fromVersion,
      attempts: x.attempts as unknown[],
      notBefore: x.notBefore === null ? null : new Date(x.notBefore),
      lastEventAt: new Date(x.lastEventAt),
    }));
    const inserted = await db.insert(rolloutExecutions).values(rows).onConflictDoNothing().returning({ d: rolloutExecutions.deviceName });
    added += inserted.length;
  }
  return added;
}
