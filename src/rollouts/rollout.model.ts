import type { Firmware } from "../ota/firmware.js";

/** Which devices of the product a rollout targets. */
export type RolloutTarget = { kind: "TAG"; tag: string } | { kind: "DEVICES"; deviceNames: readonly string[] } | { kind: "PRODUCT" };

/** CONTINUOUS: devices that come to match the target while the rollout is active join it; SNAPSHOT: those matching at creation. */
export type Membership = "CONTINUOUS" | "SNAPSHOT";

/** What `$ota_upgrade` carries for a rollout: the IotHub fields plus `sha256` (extra fields are ignored by existing firmware). */
export interface RolloutFirmware extends Firmware {
  sha256: string;
  /** An uploaded artifact's id: `url` is then its unsigned download path, and each device's command carries it signed. */
  firmwareId?: string;
}

/** Why an execution failed. TIMED_OUT is also an execution state of its own. */
export const FAILURE_CLASSES = ["DOWNLOAD_FAILED", "MD5_MISMATCH", "INSTALL_FAILED", "OTHER", "ROLLED_BACK", "TIMED_OUT"] as const;
export type FailureClass = (typeof FAILURE_CLASSES)[number];

/** Why a device was not notified (version guards, or the registry). */
export const SKIP_REASONS = ["ALREADY_ON_TARGET", "WOULD_DOWNGRADE", "NOT_ALLOWED_FROM_VERSION", "DEVICE_SUSPENDED", "DEVICE_DELETED"] as const;
export type SkipReason = (typeof SKIP_REASONS)[number];

export const EXECUTION_STATES = [
  "QUEUED",
  "NOTIFIED",
  "DOWNLOADING",
  "DOWNLOADED",
  "SUCCEEDED",
  "FAILED",
  "TIMED_OUT",
  "SKIPPED",
  "CANCELED",
] as const;
export type ExecutionState = (typeof EXECUTION_STATES)[number];

/** The command has been sent and the device has not finished. */
export const IN_PROGRESS: readonly ExecutionState[] = ["NOTIFIED", "DOWNLOADING", "DOWNLOADED"];
/** Nothing more happens to the execution unless an operator retries it. */
export const FINAL: readonly ExecutionState[] = ["SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELED"];

export const ROLLOUT_STATES = ["SCHEDULED", "RUNNING", "PAUSED", "COMPLETED", "ABORTED", "CANCELED"] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];
/** Rollouts the scheduler drives (and whose executions move on reports). */
export const ACTIVE_ROLLOUT: readonly RolloutState[] = ["SCHEDULED", "RUNNING", "PAUSED"];

/**
 * One wave of a rollout: `percent` is the cumulative share of the eligible
 * devices reached by the end of this wave (1, 10, 50, 100), `count` the
 * number of devices in this wave; exactly one of them. The last wave always
 * takes every device left. The next wave starts once `successRatio` of this
 * wave's devices (skipped and canceled ones aside) succeeded, and then
 * `soakSeconds` passed.
 */
export interface WaveSpec {
  percent: number | null;
  count: number | null;
  successRatio: number;
  soakSeconds: number;
}

/** Abort when more than `thresholdPercent` of at least `minFinished` finished executions failed with `failureClass`. */
export interface AbortRule {
  failureClass: FailureClass;
  thresholdPercent: number;
  minFinished: number;
}

/**
 * A failure of `failureClass` is tried again, up to `maxAttempts` attempts in
 * all, after `backoffSeconds` doubling each time, at most `maxBackoffSeconds`.
 */
export interface RetryRule {
  failureClass: FailureClass;
  maxAttempts: number;
  backoffSeconds: number;
  maxBackoffSeconds: number;
}

/** A daily UTC window, minutes since midnight; `endMinute` exclusive, and before `startMinute` when it spans midnight. */
export interface MaintenanceWindow {
  startMinute: number;
  endMinute: number;
}

export interface RolloutPolicy {
  /** At most this many executions in progress (notified, not finished) at once; null: no bound. */
  maxInProgress: number | null;
  /** At most this many devices notified per minute (retries included); null: no bound. */
  maxPerMinute: number | null;
  /** Empty: one wave of every device. */
  waves: readonly WaveSpec[];
  abortRules: readonly AbortRule[];
  retries: readonly RetryRule[];
  /** An execution in progress with no report for this long is TIMED_OUT; it is also the command's TTL (`expiresAt`). */
  inProgressTimeoutSeconds: number;
  /** A device on a newer version than the target is skipped unless this is set. */
  allowDowngrade: boolean;
  /** Semantic-version ranges (`1.2.x`, `>=1.0.0 <2`) or exact versions a device must be on; null: any. */
  allowedFromVersions: readonly string[] | null;
  /** Unix ms; null: start at once. */
  startAt: number | null;
  maintenanceWindow: MaintenanceWindow | null;
}

/** One command sent to the device for this execution. */
export interface Attempt {
  requestId: string;
  /** Unix ms the broker took the command. */
  notifiedAt: number;
  /** How the attempt ended; null while it runs. */
  outcome: "SUCCEEDED" | FailureClass | "CANCELED" | null;
  endedAt: number | null;
}

/** Where one device stands in one rollout: what the state machine reads and writes. */
export interface Execution {
  state: ExecutionState;
  /** Set in FAILED and TIMED_OUT (TIMED_OUT for the latter). */
  failureClass: FailureClass | null;
  /** Set in SKIPPED. */
  skipReason: SkipReason | null;
  /** The device's `firmware_ver` when the rollout took it (null: never reported). */
  fromVersion: string | null;
  /** Every command sent for it, oldest first. */
  attempts: readonly Attempt[];
  /** QUEUED: not to be notified before this (Unix ms; a retry's backoff); null: at once. */
  notBefore: number | null;
  /** Unix ms of the last transition or report: the in-progress timeout counts from it. */
  lastEventAt: number;
}

/** Per-state and per-failure-class counts of a rollout's executions. */
export interface ExecutionCounts {
  total: number;
  byState: Record<ExecutionState, number>;
  byFailureClass: Record<FailureClass, number>;
  bySkipReason: Record<SkipReason, number>;
  /** The same by wave (0-based), in wave order; skipped executions left out (they belong to no wave's progress). */
  byWave: { wave: number; byState: Record<ExecutionState, number> }[];
}

export interface Rollout {
  id: string;
  productName: string;
  name: string;
  target: RolloutTarget;
  membership: Membership;
  firmware: RolloutFirmware;
  policy: RolloutPolicy;
  state: RolloutState;
  /** The highest wave index (0-based) whose devices may be notified. */
  openWave: number;
  /** When the open wave reached its success ratio (its soak runs from here); null: not yet. */
  waveReadyAt: number | null;
  /** Set when ABORTED: the rule that fired and what was observed. */
  abortedBy: AbortCause | null;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
}

/** Why a rollout was aborted: an abort rule, or a wave that could no longer reach its success ratio. */
export type AbortCause =
  | { kind: "ABORT_RULE"; rule: AbortRule; failed: number; finished: number }
  | { kind: "WAVE_GATE"; wave: number; succeeded: number; eligible: number; successRatio: number };

export function emptyCounts(): ExecutionCounts {
  const zeros = <K extends string>(keys: readonly K[]) => Object.fromEntries(keys.map((k) => [k, 0])) as Record<K, number>;
  return { total: 0, byState: zeros(EXECUTION_STATES), byFailureClass: zeros(FAILURE_CLASSES), bySkipReason: zeros(SKIP_REASONS), byWave: [] };
}
