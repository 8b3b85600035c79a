import { DateTimeISOResolver } from "graphql-scalars";
import { Field, Float, ID, InputType, Int, ObjectType, registerEnumType } from "type-graphql";
import { connectionOf } from "../http/connection.types.js";
import { FirmwareInput } from "../ota/ota.types.js";
import {
  EXECUTION_STATES,
  FAILURE_CLASSES,
  SKIP_REASONS,
  type AbortCause,
  type Attempt,
  type ExecutionCounts,
  type ExecutionState,
  type FailureClass,
  type Membership,
  type Rollout,
  type RolloutState,
  type SkipReason,
} from "./rollout.model.js";
import type { ExecutionRow } from "./rollout.repository.js";

export enum RolloutStateEnum {
  SCHEDULED = "SCHEDULED",
  RUNNING = "RUNNING",
  PAUSED = "PAUSED",
  COMPLETED = "COMPLETED",
  ABORTED = "ABORTED",
  CANCELED = "CANCELED",
}
registerEnumType(RolloutStateEnum, { name: "RolloutState" });

export enum ExecutionStateEnum {
  QUEUED = "QUEUED",
  NOTIFIED = "NOTIFIED",
  DOWNLOADING = "DOWNLOADING",
  DOWNLOADED = "DOWNLOADED",
  SUCCEEDED = "SUCCEEDED",
  FAILED = "FAILED",
  TIMED_OUT = "TIMED_OUT",
  SKIPPED = "SKIPPED",
  CANCELED = "CANCELED",
}
registerEnumType(ExecutionStateEnum, { name: "ExecutionState", description: "Where one device stands in one rollout." });

export enum FailureClassEnum {
  DOWNLOAD_FAILED = "DOWNLOAD_FAILED",
  MD5_MISMATCH = "MD5_MISMATCH",
  INSTALL_FAILED = "INSTALL_FAILED",
  OTHER = "OTHER",
  ROLLED_BACK = "ROLLED_BACK",
  TIMED_OUT = "TIMED_OUT",
}
registerEnumType(FailureClassEnum, {
  name: "FailureClass",
  description: "Why an execution failed: the device's failure codes, a silent rollback (back on its old version after DOWNLOADED), or no report in time.",
});

export enum SkipReasonEnum {
  ALREADY_ON_TARGET = "ALREADY_ON_TARGET",
  WOULD_DOWNGRADE = "WOULD_DOWNGRADE",
  NOT_ALLOWED_FROM_VERSION = "NOT_ALLOWED_FROM_VERSION",
  DEVICE_SUSPENDED = "DEVICE_SUSPENDED",
  DEVICE_DELETED = "DEVICE_DELETED",
}
registerEnumType(SkipReasonEnum, { name: "SkipReason" });

export enum MembershipEnum {
  SNAPSHOT = "SNAPSHOT",
  CONTINUOUS = "CONTINUOUS",
}
registerEnumType(MembershipEnum, {
  name: "RolloutMembership",
  description: "SNAPSHOT: the devices the target matched at creation. CONTINUOUS: devices that come to match it while the rollout is active join it (it then runs until canceled).",
});

// ---- inputs ---------------------------------------------------------------------------------

@InputType({ description: "Exactly one of tag, deviceNames and wholeProduct." })
export class RolloutTargetInput {
  @Field(() => String, { nullable: true })
  tag?: string | null;

  @Field(() => [String], { nullable: true, description: "1..10000 registered devices." })
  deviceNames?: string[] | null;

  @Field(() => Boolean, { nullable: true, description: "true: every device of the product." })
  wholeProduct?: boolean | null;
}

@InputType()
export class RolloutFirmwareInput extends FirmwareInput {
  @Field(() => String, { description: "64 hex characters, sent beside md5 (IotHub firmware checks md5)." })
  sha256!: string;
}

@InputType({ description: "Exactly one of percent (cumulative share of eligible devices reached by this wave) and count (devices in this wave). The last wave takes every device left." })
export class WaveInput {
  @Field(() => Float, { nullable: true })
  percent?: number | null;

  @Field(() => Int, { nullable: true })
  count?: number | null;

  @Field(() => Float, { nullable: true, description: "Share (0..1) of this wave that must succeed before the next starts; default 1." })
  successRatio?: number | null;

  @Field(() => Int, { nullable: true, description: "Then wait this long before the next wave; default 0." })
  soakSeconds?: number | null;
}

const ABORT_RULE = "Abort when more than thresholdPercent of at least minFinished finished executions failed with failureClass.";

/** The same shape in and out. */
@InputType("AbortRuleInput", { description: ABORT_RULE })
@ObjectType("AbortRule", { description: ABORT_RULE, simpleResolvers: true })
export class AbortRuleSpec {
  @Field(() => FailureClassEnum)
  failureClass!: FailureClass;

  @Field(() => Float)
  thresholdPercent!: number;

  @Field(() => Int)
  minFinished!: number;
}

@InputType({ description: "Try a failure of this class again: up to maxAttempts in all, after backoffSeconds doubling each time (at most maxBackoffSeconds)." })
export class RetryRuleInput {
  @Field(() => FailureClassEnum)
  failureClass!: FailureClass;

  @Field(() => Int)
  maxAttempts!: number;

  @Field(() => Int)
  backoffSeconds!: number;

  @Field(() => Int, { nullable: true, description: "Default 3600." })
  maxBackoffSeconds?: number | null;
}

const WINDOW = "A daily window, UTC, outside which no device is notified. `HH:MM`; end before start spans midnight.";

/** The same shape in and out. */
@InputType("MaintenanceWindowInput", { description: WINDOW })
@ObjectType("MaintenanceWindow", { description: WINDOW, simpleResolvers: true })
export class MaintenanceWindowSpec {
  @Field(() => String)
  start!: string;

  @Field(() => String)
  end!: string;
}

@InputType()
export class RolloutPolicyInput {
  @Field(() => Int, { nullable: true, description: "At most this many devices in progress at once." })
  maxInProgress?: number | null;

  @Field(() => Int, { nullable: true, description: "At most this many devices notified per minute (retries included)." })
  maxPerMinute?: number | null;

  @Field(() => [WaveInput], { nullable: true })
  waves?: WaveInput[] | null;

  @Field(() => [AbortRuleSpec], { nullable: true })
  abortRules?: AbortRuleSpec[] | null;

  @Field(() => [RetryRuleInput], { nullable: true })
  retries?: RetryRuleInput[] | null;

  @Field(() => Int, { nullable: true, description: "A device in progress with no report for this long is TIMED_OUT; also its command's TTL. Default 3600." })
  inProgressTimeoutSeconds?: number | null;

  @Field(() => Boolean, { nullable: true, description: "Notify devices on a newer version than the target too; default false (skipped WOULD_DOWNGRADE)." })
  allowDowngrade?: boolean | null;

  @Field(() => [String], { nullable: true, description: "Only devices on one of these versions or semantic-version ranges (`1.2.x`, `>=1.0.0 <2`)." })
  allowedFromVersions?: string[] | null;

  @Field(() => DateTimeISOResolver, { nullable: true, description: "Notify nobody before this (the rollout is SCHEDULED until then)." })
  startAt?: Date | null;

  @Field(() => MaintenanceWindowSpec, { nullable: true })
  maintenanceWindow?: MaintenanceWindowSpec | null;
}

@InputType()
export class CreateRolloutInput {
  @Field(() => String)
  productName!: string;

  @Field(() => String, { nullable: true, description: "A label for people." })
  name?: string | null;

  @Field(() => RolloutTargetInput)
  target!: RolloutTargetInput;

  @Field(() => MembershipEnum, { nullable: true, description: "Default SNAPSHOT." })
  membership?: Membership | null;

  @Field(() => RolloutFirmwareInput, { nullable: true, description: "A firmware hosted elsewhere; or give firmwareId." })
  firmware?: RolloutFirmwareInput | null;

  @Field(() => ID, {
    nullable: true,
    description: "An uploaded artifact of the product (firmwares): each device's command carries its url signed for that device, expiring with the command.",
  })
  firmwareId?: string | null;

  @Field(() => RolloutPolicyInput, { nullable: true })
  policy?: RolloutPolicyInput | null;
}

// ---- outputs --------------------------------------------------------------------------------

@ObjectType("RolloutTarget", { simpleResolvers: true })
export class RolloutTargetType {
  @Field(() => String, { description: "TAG, DEVICES or PRODUCT." })
  kind!: string;

  @Field(() => String, { nullable: true })
  tag!: string | null;

  @Field(() => [String], { nullable: true })
  deviceNames!: string[] | null;
}

@ObjectType("RolloutFirmware", { simpleResolvers: true })
export class RolloutFirmwareType {
  @Field(() => String)
  url!: string;

  @Field(() => String)
  version!: string;

  @Field(() => Int)
  size!: number;

  @Field(() => String)
  md5!: string;

  @Field(() => String)
  sha256!: string;

  @Field(() => String)
  type!: string;

  @Field(() => ID, { nullable: true, description: "The uploaded artifact, when the rollout was created with firmwareId (url is then its unsigned download path)." })
  firmwareId!: string | null;
}

@ObjectType("Wave", { simpleResolvers: true })
export class WaveType {
  @Field(() => Float, { nullable: true })
  percent!: number | null;

  @Field(() => Int, { nullable: true })
  count!: number | null;

  @Field(() => Float)
  successRatio!: number;

  @Field(() => Int)
  soakSeconds!: number;
}

@ObjectType("RetryRule", { simpleResolvers: true })
export class RetryRuleType {
  @Field(() => FailureClassEnum)
  failureClass!: FailureClass;

  @Field(() => Int)
  maxAttempts!: number;

  @Field(() => Int)
  backoffSeconds!: number;

  @Field(() => Int)
  maxBackoffSeconds!: number;
}

@ObjectType("RolloutPolicy", { simpleResolvers: true })
export class RolloutPolicyType {
  @Field(() => Int, { nullable: true })
  maxInProgress!: number | null;

  @Field(() => Int, { nullable: true })
  maxPerMinute!: number | null;

  @Field(() => [WaveType])
  waves!: WaveType[];

  @Field(() => [AbortRuleSpec])
  abortRules!: AbortRuleSpec[];

  @Field(() => [RetryRuleType])
  retries!: RetryRuleType[];

  @Field(() => Int)
  inProgressTimeoutSeconds!: number;

  @Field(() => Boolean)
  allowDowngrade!: boolean;

  @Field(() => [String], { nullable: true })
  allowedFromVersions!: string[] | null;

  @Field(() => DateTimeISOResolver, { nullable: true })
  startAt!: Date | null;

  @Field(() => MaintenanceWindowSpec, { nullable: true })
  maintenanceWindow!: MaintenanceWindowSpec | null;
}

@ObjectType("AbortCause", { description: "Why a rollout was aborted.", simpleResolvers: true })
export class AbortCauseType {
  @Field(() => String, { description: "ABORT_RULE or WAVE_GATE (a wave could no longer reach its success ratio)." })
  kind!: string;

  @Field(() => String, { description: "The rule and what was observed, in a sentence." })
  message!: string;

  @Field(() => AbortRuleSpec, { nullable: true })
  rule!: AbortRuleSpec | null;

  @Field(() => Int, { nullable: true })
  failed!: number | null;

  @Field(() => Int, { nullable: true })
  finished!: number | null;

  @Field(() => Int, { nullable: true })
  wave!: number | null;

  @Field(() => Int, { nullable: true })
  succeeded!: number | null;

  @Field(() => Int, { nullable: true })
  eligible!: number | null;
}

@ObjectType({ simpleResolvers: true, description: "One wave's executions (skipped ones left out)." })
export class WaveCounts {
  @Field(() => Int, { description: "0-based, as Rollout.openWave." })
  wave!: number;
  @Field(() => Int, { description: "Devices of the wave (not skipped)." })
  devices!: number;
  @Field(() => Int)
  queued!: number;
  @Field(() => Int, { description: "notified + downloading + downloaded" })
  inProgress!: number;
  @Field(() => Int)
  succeeded!: number;
  @Field(() => Int)
  failed!: number;
  @Field(() => Int)
  timedOut!: number;
  @Field(() => Int)
  canceled!: number;
}

@ObjectType({ simpleResolvers: true })
export class FailureClassCount {
  @Field(() => FailureClassEnum)
  failureClass!: FailureClass;

  @Field(() => Int)
  count!: number;
}

@ObjectType({ simpleResolvers: true })
export class SkipReasonCount {
  @Field(() => SkipReasonEnum)
  reason!: SkipReason;

  @Field(() => Int)
  count!: number;
}

@ObjectType("ExecutionCounts", { description: "A rollout's executions per state and failure class.", simpleResolvers: true })
export class ExecutionCountsType {
  @Field(() => Int)
  total!: number;
  @Field(() => Int)
  queued!: number;
  @Field(() => Int)
  notified!: number;
  @Field(() => Int)
  downloading!: number;
  @Field(() => Int)
  downloaded!: number;
  @Field(() => Int)
  succeeded!: number;
  @Field(() => Int)
  failed!: number;
  @Field(() => Int)
  timedOut!: number;
  @Field(() => Int)
  skipped!: number;
  @Field(() => Int)
  canceled!: number;
  @Field(() => Int, { description: "notified + downloading + downloaded" })
  inProgress!: number;

  @Field(() => [FailureClassCount], { description: "FAILED and TIMED_OUT executions by class (classes with none left out)." })
  byFailureClass!: FailureClassCount[];

  @Field(() => [SkipReasonCount])
  bySkipReason!: SkipReasonCount[];

  @Field(() => [WaveCounts], { description: "Per wave, in wave order: the exact progress of each." })
  byWave!: WaveCounts[];
}

@ObjectType("Rollout", { description: "A staged upgrade of many devices.", simpleResolvers: true })
export class RolloutType {
  @Field(() => ID)
  id!: string;

  @Field(() => String)
  productName!: string;

  @Field(() => String)
  name!: string;

  @Field(() => RolloutTargetType)
  target!: RolloutTargetType;

  @Field(() => MembershipEnum)
  membership!: Membership;

  @Field(() => RolloutFirmwareType)
  firmware!: RolloutFirmwareType;

  @Field(() => RolloutPolicyType)
  policy!: RolloutPolicyType;

  @Field(() => RolloutStateEnum)
  state!: RolloutState;

  @Field(() => Int, { description: "The highest wave (0-based) whose devices may be notified." })
  openWave!: number;

  @Field(() => AbortCauseType, { nullable: true })
  abortedBy!: AbortCauseType | null;

  @Field(() => DateTimeISOResolver)
  createdAt!: Date;

  @Field(() => DateTimeISOResolver, { nullable: true })
  startedAt!: Date | null;

  @Field(() => DateTimeISOResolver, { nullable: true })
  finishedAt!: Date | null;

  /** Resolved by the resolver (one query per request for all rollouts asked), or given by the subscription. */
  counts?: ExecutionCountsType;
}

@ObjectType("ExecutionAttempt", { simpleResolvers: true })
export class ExecutionAttemptType {
  @Field(() => ID)
  requestId!: string;

  @Field(() => DateTimeISOResolver)
  notifiedAt!: Date;

  @Field(() => String, { nullable: true, description: "SUCCEEDED, a FailureClass, CANCELED; null while it runs." })
  outcome!: string | null;

  @Field(() => DateTimeISOResolver, { nullable: true })
  endedAt!: Date | null;
}

@ObjectType("RolloutExecution", { description: "One device in one rollout.", simpleResolvers: true })
export class ExecutionType {
  @Field(() => ID)
  rolloutId!: string;

  @Field(() => String)
  productName!: string;

  @Field(() => String)
  deviceName!: string;

  @Field(() => Int)
  wave!: number;

  @Field(() => ExecutionStateEnum)
  state!: ExecutionState;

  @Field(() => FailureClassEnum, { nullable: true })
  failureClass!: FailureClass | null;

  @Field(() => SkipReasonEnum, { nullable: true })
  skipReason!: SkipReason | null;

  @Field(() => String, { nullable: true, description: "The device's firmware_ver when the rollout took it." })
  fromVersion!: string | null;

  @Field(() => [ExecutionAttemptType])
  attempts!: ExecutionAttemptType[];

  @Field(() => DateTimeISOResolver, { nullable: true, description: "QUEUED for a retry: not notified before this." })
  notBefore!: Date | null;

  @Field(() => DateTimeISOResolver)
  lastEventAt!: Date;
}

export const RolloutConnection = connectionOf(RolloutType, "Rollout");
export const ExecutionConnection = connectionOf(ExecutionType, "Execution");

@ObjectType({ simpleResolvers: true })
export class WavePreview {
  @Field(() => Int)
  index!: number;

  @Field(() => Int)
  size!: number;
}

@ObjectType({ description: "What createRollout would do with the same input; nothing is sent.", simpleResolvers: true })
export class RolloutPreview {
  @Field(() => Int, { description: "Devices the target matches." })
  targeted!: number;

  @Field(() => Int, { description: "Devices that would be notified." })
  eligible!: number;

  @Field(() => Int)
  skipped!: number;

  @Field(() => [SkipReasonCount], { description: "Skipped devices by reason (reasons with none left out)." })
  skippedByReason!: SkipReasonCount[];

  @Field(() => [WavePreview])
  waves!: WavePreview[];

  @Field(() => DateTimeISOResolver, { description: "When the first device would be notified (start time and window)." })
  startsAt!: Date;

  @Field(() => Int, { description: "The least time the pacing and soak times imply: notifying every device at maxPerMinute, plus each wave's soak. Devices' own upgrade time comes on top." })
  minimumSeconds!: number;

  @Field(() => Int, { description: "The most: every device taking the whole in-progress timeout, maxInProgress at a time, plus the soaks." })
  worstCaseSeconds!: number;
}

// ---- mapping --------------------------------------------------------------------------------

const hhmm = (minute: number) => `${String(Math.floor(minute / 60)).padStart(2, "0")}:${String(minute % 60).padStart(2, "0")}`;
const date = (t: number | null) => (t === null ? null : new Date(t));

export function toRolloutType(r: Rollout, counts?: ExecutionCounts): RolloutType {
  const { policy } = r;
  return {
    id: r.id,
    productName: r.productName,
    name: r.name,
    target: {
      kind: r.target.kind,
      tag: r.target.kind === "TAG" ? r.target.tag : null,
      deviceNames: r.target.kind === "DEVICES" ? [...r.target.deviceNames] : null,
    },
    membership: r.membership,
    firmware: { ...r.firmware, firmwareId: r.firmware.firmwareId ?? null },
    policy: {
      ...policy,
      waves: policy.waves.map((w) => ({ ...w })),
      abortRules: policy.abortRules.map((a) => ({ ...a })),
      retries: policy.retries.map((a) => ({ ...a })),
      allowedFromVersions: policy.allowedFromVersions && [...policy.allowedFromVersions],
      startAt: date(policy.startAt),
      maintenanceWindow: policy.maintenanceWindow && { start: hhmm(policy.maintenanceWindow.startMinute), end: hhmm(policy.maintenanceWindow.endMinute) },
    },
    state: r.state,
    openWave: r.openWave,
    abortedBy: r.abortedBy && toAbortCause(r.abortedBy),
    createdAt: new Date(r.createdAt),
    startedAt: date(r.startedAt),
    finishedAt: date(r.finishedAt),
    ...(counts && { counts: toCountsType(counts) }),
  };
}

export function toAbortCause(c: AbortCause): AbortCauseType {
  switch (c.kind) {
    case "ABORT_RULE":
      return {
        kind: c.kind,
        message: `${c.failed} of ${c.finished} finished executions failed with ${c.rule.failureClass}: more than the rule's ${c.rule.thresholdPercent} % (at least ${c.rule.minFinished} finished)`,
        rule: { ...c.rule },
        failed: c.failed,
        finished: c.finished,
        wave: null,
        succeeded: null,
        eligible: null,
      };
    case "WAVE_GATE":
      return {
        kind: c.kind,
        message: `wave ${c.wave} can no longer reach its success ratio ${c.successRatio}: ${c.succeeded} of ${c.eligible} succeeded and the rest ended`,
        rule: null,
        failed: null,
        finished: null,
        wave: c.wave,
        succeeded: c.succeeded,
        eligible: c.eligible,
      };
    default: {
      const never: never = c;
      return never;
    }
  }
}

export function toCountsType(c: ExecutionCounts): ExecutionCountsType {
  const s = c.byState;
  return {
    total: c.total,
    queued: s.QUEUED,
    notified: s.NOTIFIED,
    downloading: s.DOWNLOADING,
    downloaded: s.DOWNLOADED,
    succeeded: s.SUCCEEDED,
    failed: s.FAILED,
    timedOut: s.TIMED_OUT,
    skipped: s.SKIPPED,
    canceled: s.CANCELED,
    inProgress: s.NOTIFIED + s.DOWNLOADING + s.DOWNLOADED,
    byFailureClass: FAILURE_CLASSES.filter((f) => c.byFailureClass[f] > 0).map((f) => ({ failureClass: f, count: c.byFailureClass[f] })),
    bySkipReason: SKIP_REASONS.filter((r) => c.bySkipReason[r] > 0).map((r) => ({ reason: r, count: c.bySkipReason[r] })),
    byWave: c.byWave.map(({ wave, byState: w }) => ({
      wave,
      devices: EXECUTION_STATES.reduce((n, state) => n + w[state], 0),
      queued: w.QUEUED,
      inProgress: w.NOTIFIED + w.DOWNLOADING + w.DOWNLOADED,
      succeeded: w.SUCCEEDED,
      failed: w.FAILED,
      timedOut: w.TIMED_OUT,
      canceled: w.CANCELED,
    })),
  };
}

export function toExecutionType(row: ExecutionRow): ExecutionType {
  const x = row.execution;
  return {
    rolloutId: row.rolloutId,
    productName: row.productName,
    deviceName: row.deviceName,
    wave: row.wave,
    state: x.state,
    failureClass: x.failureClass,
    skipReason: x.skipReason,
    fromVersion: x.fromVersion,
    attempts: x.attempts.map((a: Attempt) => ({ requestId: a.requestId, notifiedAt: new Date(a.notifiedAt), outcome: a.outcome, endedAt: date(a.endedAt) })),
    notBefore: date(x.notBefore),
    lastEventAt: new Date(x.lastEventAt),
  };
}

/** `HH:MM` → minutes since midnight, or null when it is not a time of day. */
export function minuteOf(hhmmText: string): number | null {
  const m = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(hhmmText);
  return m ? Number(m[1]) * 60 + Number(m[2]) : null;
}
