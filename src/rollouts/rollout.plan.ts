import { createHash } from "node:crypto";
import { estimateDuration, versionGuard, waveOf, waveSizes } from "./rollout.policy.js";
import {
  SKIP_REASONS,
  type Execution,
  type RolloutPolicy,
  type SkipReason,
} from "./rollout.model.js";
import type { TargetDevice } from "./rollout.repository.js";

export interface PlannedExecution {
  deviceName: string;
  wave: number;
  execution: Execution;
}

/** What a rollout would do, computed the same way for `previewRollout` and `createRollout`. */
export interface RolloutPlan {
  targeted: number;
  eligible: number;
  skipped: Record<SkipReason, number>;
  waveSizes: number[];
  executions: PlannedExecution[];
  estimate: ReturnType<typeof estimateDuration>;
}

/** A device's place in wave order: a hash of its name, so waves are a spread of the fleet, not its alphabetical head. */
const spread = (name: string) => createHash("sha1").update(name).digest("hex");

/** A new execution: QUEUED, or SKIPPED when a guard rules the device out. */
export function newExecution(device: TargetDevice, targetVersion: string, policy: RolloutPolicy, now: number): Execution {
  const guard: SkipReason | null = device.suspended ? "DEVICE_SUSPENDED" : versionGuard(device.firmwareVersion, targetVersion, policy);
  return {
    state: guard === null ? "QUEUED" : "SKIPPED",
    failureClass: null,
    skipReason: guard,
    fromVersion: device.firmwareVersion,
    attempts: [],
    notBefore: null,
    lastEventAt: now,
  };
}

/**
 * The executions of a rollout over `devices`: each guarded, the eligible ones
 * dealt into waves in a stable spread order (the same devices land in the
 * same waves in the preview and in the rollout), with the time the pacing implies.
 */
export function planRollout(devices: readonly TargetDevice[], targetVersion: string, policy: RolloutPolicy, now: number): RolloutPlan {
  const skipped = Object.fromEntries(SKIP_REASONS.map((r) => [r, 0])) as Record<SkipReason, number>;
  const planned = devices.map((d) => ({ device: d, execution: newExecution(d, targetVersion, policy, now) }));
  const eligible = planned
    .filter((p) => p.execution.state === "QUEUED")
    .map((p) => ({ ...p, order: spread(p.device.deviceName) }))
    .sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0));
  const sizes = waveSizes(eligible.length, policy.waves);
  const lastWave = sizes.length - 1;
  const executions: PlannedExecution[] = eligible.map((p, i) => ({ deviceName: p.device.deviceName, wave: waveOf(i, sizes), execution: p.execution }));
  for (const p of planned) {
    if (p.execution.state !== "SKIPPED") continue;
    skipped[p.execution.skipReason as SkipReason]++;
    executions.push({ deviceName: p.device.deviceName, wave: lastWave, execution: p.execution });
  }
  return {
    targeted: devices.length,
    eligible: eligible.length,
    skipped,
    waveSizes: sizes,
    executions,
    estimate: estimateDuration(sizes, policy, now),
  };
}
