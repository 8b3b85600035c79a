import { beforeAll, describe, expect, it } from "vitest";
import { PreviewRolloutDocument, RolloutChangedDocument } from "../generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { createRollout, executionsOf, firmwareFile, rolloutIn, rolloutInput, simFleet } from "../helpers/rollout.js";
import { eventually } from "../helpers/wait.js";
import type { FirmwareServer } from "../../src/sim/firmware.server.js";

/** The most attempts running at one moment: what maxInProgress bounds. */
function mostAtOnce(attempts: { notifiedAt: string; endedAt?: string | null }[]): number {
  const edges = attempts.flatMap((a) => [
    { at: Date.parse(a.notifiedAt), d: 1 },
    { at: a.endedAt ? Date.parse(a.endedAt) : Infinity, d: -1 },
  ]);
  edges.sort((x, y) => x.at - y.at || x.d - y.d);
  let now = 0;
  let most = 0;
  for (const e of edges) most = Math.max(most, (now += e.d));
  return most;
}



describe("rollouts driven by the server against simulated IotHub devices", () => {
  let t: TestApp;
  let fw: FirmwareServer;

  beforeAll(async () => {
    t = await startApp({ env: { ROLLOUT_TICK_MS: "100" } });
    fw = await firmwareFile();
  });

  it("runs a 200-device rollout in waves within its pacing to COMPLETED, every execution SUCCEEDED, as previewed and as subscribed", async () => {
    const { productName, fleet } = await simFleet(t, { count: 200 });
    const input = rolloutInput(productName, fw, {
      name: "canary then all",
      policy: {
        maxInProgress: 40,
        waves: [{ percent: 5 }, { percent: 50, soakSeconds: 1 }, { percent: 100 }],
      },
    });
    const { previewRollout: preview } = await gqlOk(t, PreviewRolloutDocument, { input });
    expect(preview).toMatchObject({ targeted: 200, eligible: 200, skipped: 0 });
    expect(preview.waves.map((w) => w.size)).toEqual([10, 90, 100]);

    const rollout = await createRollout(t, input);
    const live = await subscribe(wsClient(t), RolloutChangedDocument, { id: rollout.id });
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"], 90_000);
    expect(done.counts).toMatchObject({ total: 200, succeeded: 200, failed: 0, inProgress: 0, queued: 0 });
    expect(fleet.summary().states.succeeded).toBe(200);
    const executions = await executionsOf(t, rollout.id);
    expect(mostAtOnce(executions.flatMap((e) => e.attempts))).toBeLessThanOrEqual(40);
    expect(executions.map((e) => e.wave).filter((w) => w === 0)).toHaveLength(preview.waves[0]!.size);
    expect(executions.every((e) => e.state === "SUCCEEDED" && e.attempts.length === 1 && e.fromVersion === "1.0")).toBe(true);
    // The subscription ends on the true final counts, and completes.
    await eventually(() => {
      const last = live.results.pending.at(-1)?.data?.rolloutChanged;
      expect(last?.state).toBe("COMPLETED");
      expect(last?.counts).toEqual(done.counts);
    });
  }, 120_000);
});
