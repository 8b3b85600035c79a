import { randomBytes } from "node:crypto";
import { ObjectId } from "bson";
import { describe, expect, it } from "vitest";
import { PauseRolloutDocument, ResumeRolloutDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestAppOptions } from "../helpers/app.js";
import { metric } from "../helpers/metrics.js";
import { freePort, OwnMosquitto, OwnRedis, ServerProcess } from "../helpers/processes.js";
import {
  plantStaleClaim,
  publishUpgrade,
  respondingFleet,
  storedExecutions,
  type RespondingDevice,
} from "../helpers/responder.js";
import { createRollout, executionsOf, rolloutIn, rolloutInput } from "../helpers/rollout.js";
import { firmware } from "../helpers/fixtures.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually, Inbox } from "../helpers/wait.js";

/**
 * Rollouts across a crash and across instances. The devices are
 * RespondingDevices on an external Mosquitto of the test's own: they stay
 * connected to the broker while a server dies, and they record the requestId
 * of every `$ota_upgrade` they receive, which is what "notified twice" means.
 * All need a PostgreSQL server (one database for two processes, two apps, or
 * an app and its restart), and are skipped without DATABASE_URL.
 */

/** Each device's requestIds, in arrival order. */
const received = (devices: readonly RespondingDevice[]) => new Map(devices.map((d) => [d.deviceName, d.upgrades.map((u) => u.requestId)]));

const IN_FLIGHT = ["NOTIFIED", "DOWNLOADING", "DOWNLOADED"];

describe("a rollout across a SIGKILL of its server", () => {
  it.skipIf(!DATABASE_URL)(
    "a rollout survives a server restart mid-way: no device notified twice for one attempt and none forgotten",
    async ({ annotate }) => {
      const DEVICES = 48;
      const MAX_IN_PROGRESS = 8;
      /** The server is killed as the device notified this many-th receives its command: some done, some in flight, most still queued. */
      const KILL_AT = 2 * MAX_IN_PROGRESS;

      const broker = await OwnMosquitto.start();
      onTeardown(() => broker.stop());
      const database = await freshDatabase("postgres");
      if (database.kind !== "postgres") throw new Error("a PostgreSQL server database was asked for");
      const token = `test-admin-${randomBytes(16).toString("hex")}`;
      const env = {
        PATH: process.env.PATH,
        REDIS_URL,
        REDIS_PREFIX: `${uniq("rdur")}:`,
        ADMIN_TOKEN: token,
        LOG_LEVEL: "warn",
        DATABASE_URL: database.url,
        DATA_DIR: tempDir("rdur"),
        MQTT_URL: broker.url,
        // A fixed client id: the broker keeps the server's session, and queues what devices report while it is dead.
        MQTT_CLIENT_ID: uniq("server"),
        MQTT_SHARE_GROUP: uniq("grp"),
        ROLLOUT_TICK_MS: "100",
        // A claim the dead server never confirmed is re-sent once 2 × this old: seconds, not the default 20 s.
        PUBLISH_TIMEOUT_MS: "1000",
      };
      let server = await ServerProcess.start({ ...env, PORT: String(await freePort()) });
      onTeardown(() => server.process.kill("SIGKILL"));
      let api = { httpUrl: server.httpUrl, token };

      let notified = 0;
      /** The killed server's exit, once it is killed. */
      const kills = new Inbox<Promise<unknown>>();
      const { productName, devices } = await respondingFleet(api, {
        mqttUrl: broker.url,
        count: DEVICES,
        subscribe: true,
        behaviour: {
          initialVersion: "1.0",
          downloadMs: 250,
          // Killed from the device's own message handler: the server has just published this command and may not
          // have recorded the broker's confirmation yet, the window a stale claim's re-send is for.
          onUpgrade: () => {
            if (++notified !== KILL_AT) return;
            const dead = server.process;
            kills.push(new Promise((r) => dead.once("exit", r)));
            dead.kill("SIGKILL");
          },
        },
      });
      const rollout = await createRollout(api, rolloutInput(productName, { file: firmware }, { policy: { maxInProgress: MAX_IN_PROGRESS } }));
      await (await kills.next(() => true, 20_000));

      // What the dead server left in PostgreSQL: mid-way, with executions in flight.
      const atKill = await storedExecutions(database.url, rollout.id);
      const claimed = new Map(atKill.filter((x) => x.dispatchRequestId !== null).map((x) => [x.deviceName, x.dispatchRequestId as string]));
      const count = (p: (x: (typeof atKill)[number]) => boolean) => atKill.filter(p).length;
      expect(count((x) => x.state === "SUCCEEDED")).toBeGreaterThan(0);
      expect(count((x) => IN_FLIGHT.includes(x.state) || x.dispatchRequestId !== null)).toBeGreaterThan(0);
      expect(count((x) => x.state === "QUEUED" && x.dispatchRequestId === null)).toBeGreaterThan(DEVICES - KILL_AT - MAX_IN_PROGRESS - 1);
      const receivedAtKill = received(devices);

      server = await ServerProcess.start({ ...env, PORT: String(await freePort()) });
      api = { httpUrl: server.httpUrl, token };
      const done = await rolloutIn(api, rollout.id, ["COMPLETED"], 45_000);
      expect(done.counts).toMatchObject({ total: DEVICES, succeeded: DEVICES, failed: 0, timedOut: 0, inProgress: 0, queued: 0 });

      // None forgotten, one attempt each: every execution SUCCEEDED on its first attempt.
      const executions = await executionsOf(api, rollout.id);
      expect(executions).toHaveLength(DEVICES);
      const attemptOf = new Map(executions.map((x) => [x.deviceName, x.attempts.map((a) => a.requestId)]));
      expect(executions.filter((x) => x.state !== "SUCCEEDED" || x.attempts.length !== 1)).toEqual([]);

      // Notified once per attempt. Each device received only its attempt's requestId (never a second attempt's), and
      // once, except a device whose claim the dead server had recorded but not confirmed (dispatchRequestId still set
      // at the kill): the restarted server re-sends that claim's command under the same requestId, and the device may
      // have had it before the kill. So those devices may have received it twice, with that very requestId; no other.
      const commands = received(devices);
      const wrong: Record<string, { received: string[]; attempt: string[]; claimedAtKill: string | null }> = {};
      for (const [deviceName, ids] of commands) {
        const attempt = attemptOf.get(deviceName) ?? [];
        const claim = claimed.get(deviceName) ?? null;
        const allowed = claim !== null && claim === attempt[0] ? 2 : 1;
        if (ids.length < 1 || ids.length > allowed || ids.some((id) => id !== attempt[0])) {
          wrong[deviceName] = { received: ids, attempt, claimedAtKill: claim };
        }
      }
      expect(wrong).toEqual({});
      expect(devices.flatMap((d) => d.errors)).toEqual([]);
      expect(devices.every((d) => d.firmwareVersion === "2.0")).toBe(true);

      const twice = [...commands].filter(([, ids]) => ids.length === 2).length;
      const deliveredBeforeKill = [...claimed.keys()].filter((d) => (receivedAtKill.get(d)?.length ?? 0) > 0).length;
      await annotate(
        `at the kill: ${count((x) => x.state === "SUCCEEDED")} succeeded, ${claimed.size} claims unconfirmed ` +
          `(${deliveredBeforeKill} of them already received); after the restart ${twice} devices received their command a second time (same requestId)`,
      );
    },
    60_000,
  );
});

describe("two instances sharing Redis, PostgreSQL and an external broker", () => {
  it.skipIf(!DATABASE_URL)(
    "two instances sharing Redis, PostgreSQL and a broker drive one rollout together without double notifications",
    async ({ annotate }) => {
      const DEVICES = 100;
      const broker = await OwnMosquitto.start();
      onTeardown(() => broker.stop());
      const database = await freshDatabase("postgres");
      const shared = { database, redisPrefix: `${uniq("t")}:`, externalBroker: broker.url, shareGroup: uniq("grp"), env: { ROLLOUT_TICK_MS: "100" } };
      const a = await startApp({ ...shared, mqttClientId: uniq("server-a") });
      const b = await startApp({ ...shared, mqttClientId: uniq("server-b") });

      const { productName, devices } = await respondingFleet(a, {
        mqttUrl: broker.url,
        count: DEVICES,
        subscribe: true,
        behaviour: { initialVersion: "1.0", downloadMs: 50 },
      });
      // Small batches: many scheduler passes, so both instances' schedulers take the rollout's lock in turn.
      const rollout = await createRollout(a, rolloutInput(productName, { file: firmware }, { policy: { maxInProgress: 10 } }));
      const done = await rolloutIn(b, rollout.id, ["COMPLETED"], 45_000);
      expect(done.counts).toMatchObject({ total: DEVICES, succeeded: DEVICES, failed: 0, timedOut: 0, inProgress: 0, queued: 0 });

      const executions = await executionsOf(a, rollout.id);
      expect(executions.filter((x) => x.state !== "SUCCEEDED" || x.attempts.length !== 1)).toEqual([]);
      const attemptOf = new Map(executions.map((x) => [x.deviceName, x.attempts[0]?.requestId]));
      // No crash here: every device received exactly one $ota_upgrade, its attempt's.
      const wrong = [...received(devices)].filter(([deviceName, ids]) => ids.length !== 1 || ids[0] !== attemptOf.get(deviceName));
      expect(wrong).toEqual([]);
      expect(devices.flatMap((d) => d.errors)).toEqual([]);

      // Both worked: each instance sent some of the commands (100 in all, none twice) and ingested some of the reports.
      const sentBy = await Promise.all([a, b].map((t) => metric(t, "iothub_ota_commands_sent_total", { command: "$ota_upgrade" })));
      expect(sentBy[0]! + sentBy[1]!).toBe(DEVICES);
      expect(sentBy.every((n) => n > 0)).toBe(true);
      const ingestedBy = await Promise.all([a, b].map((t) => metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status" })));
      expect(ingestedBy.every((n) => n > 0)).toBe(true);
      await annotate(`commands sent by A, B: ${sentBy.join(", ")}; progress reports ingested by A, B: ${ingestedBy.join(", ")}`);
    },
    60_000,
  );
});

/**
 * The state a crash between recording claims and recording the broker's
 * confirmations leaves, made on purpose (a SIGKILL lands in that window only
 * by chance): a rollout over a few devices is created and paused before it
 * notifies anyone (no device is notified within a second of creation), its
 * server stopped, and claims are planted in PostgreSQL as the dead server
 * would have left them. A device made slow (`slowUntil`) does not answer an
 * upgrade until it has received that many `$ota_upgrade`s (a slow link: its
 * answer comes late).
 */
async function rolloutLeftByACrash(env: Record<string, string> = {}) {
  const broker = await OwnMosquitto.start();
  onTeardown(() => broker.stop());
  const database = await freshDatabase("postgres");
  if (database.kind !== "postgres") throw new Error("a PostgreSQL server database was asked for");
  const options: TestAppOptions = {
    database,
    redisPrefix: `${uniq("t")}:`,
    externalBroker: broker.url,
    shareGroup: uniq("grp"),
    mqttClientId: uniq("server"),
    env: { ROLLOUT_TICK_MS: "100", PUBLISH_TIMEOUT_MS: "1000", ...env },
  };
  const slow = new Map<string, { until: number; answer: () => void; answered: Promise<void> }>();
  const first = await startApp(options);
  const { productName, devices } = await respondingFleet(first, {
    mqttUrl: broker.url,
    count: 6,
    subscribe: true,
    behaviour: {
      initialVersion: "1.0",
      downloadMs: 20,
      answerWhen: (d) => slow.get(d.deviceName)?.answered,
      onUpgrade: (d) => {
        const s = slow.get(d.deviceName);
        if (s && d.upgrades.length >= s.until) s.answer();
      },
    },
  });
  const input = rolloutInput(productName, { file: firmware }, { policy: {} });
  const rollout = await createRollout(first, input);
  await gqlOk(first, PauseRolloutDocument, { id: rollout.id });
  await first.stop();
  const stored = await storedExecutions(database.url, rollout.id);
  expect(stored.filter((x) => x.state !== "QUEUED" || x.dispatchRequestId !== null || x.attempts.length > 0)).toEqual([]);
  return {
    broker,
    database,
    options,
    productName,
    devices,
    rollout,
    firmware: input.firmware,
    /** The device answers an upgrade only once it has received `until` of them. */
    slowUntil(deviceName: string, until: number) {
      let answer!: () => void;
      const answered = new Promise<void>((r) => (answer = r));
      slow.set(deviceName, { until, answer, answered });
    },
  };
}

describe("claims a dead server recorded but never confirmed", () => {
  it.skipIf(!DATABASE_URL)(
    "are sent after the restart under the recorded requestId, and only those: a device that had it already gets it again, no other command",
    async () => {
      const left = await rolloutLeftByACrash();
      const [neverSent, delivered] = left.devices as [RespondingDevice, RespondingDevice, ...RespondingDevice[]];
      const ids = { neverSent: new ObjectId().toHexString(), delivered: new ObjectId().toHexString() };
      // One claim died before its publish; the other's command reached the device, which is slow to answer.
      await plantStaleClaim(left.database.url, left.rollout.id, neverSent.deviceName, ids.neverSent);
      await plantStaleClaim(left.database.url, left.rollout.id, delivered.deviceName, ids.delivered);
      left.slowUntil(delivered.deviceName, 2);
      await publishUpgrade(left.broker.url, left.productName, delivered.deviceName, ids.delivered, left.firmware);
      await eventually(() => expect(delivered.upgrades).toHaveLength(1));

      const second = await startApp(left.options);
      await gqlOk(second, ResumeRolloutDocument, { id: left.rollout.id });
      await rolloutIn(second, left.rollout.id, ["COMPLETED"]);

      const executions = new Map((await executionsOf(second, left.rollout.id)).map((x) => [x.deviceName, x]));
      expect([...executions.values()].filter((x) => x.state !== "SUCCEEDED" || x.attempts.length !== 1)).toEqual([]);
      expect(neverSent.upgrades.map((u) => u.requestId)).toEqual([ids.neverSent]);
      expect(delivered.upgrades.map((u) => u.requestId)).toEqual([ids.delivered, ids.delivered]);
      expect(executions.get(neverSent.deviceName)?.attempts.map((a) => a.requestId)).toEqual([ids.neverSent]);
      expect(executions.get(delivered.deviceName)?.attempts.map((a) => a.requestId)).toEqual([ids.delivered]);
      for (const d of left.devices.slice(2)) expect(d.upgrades.map((u) => u.requestId)).toEqual(executions.get(d.deviceName)?.attempts.map((a) => a.requestId));
      expect(left.devices.flatMap((d) => d.errors)).toEqual([]);
    },
    60_000,
  );

  // A publish answering BROKER_UNAVAILABLE sent nothing this time; for the re-send of a stale claim the dead server may
  // have sent it already, so the claim keeps its requestId (this test failed when the claim was released instead).
  it.skipIf(!DATABASE_URL)(
    "a stale claim whose re-send finds the broker unavailable is sent again later under the same requestId, never under a new one",
    async () => {
      const redis = await OwnRedis.start({ durable: true });
      // Marking the upgrade attempt in Redis comes first in every command publish: with Redis down it answers BROKER_UNAVAILABLE, quickly.
      const left = await rolloutLeftByACrash({ REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "300" });
      const [delivered, ...others] = left.devices as [RespondingDevice, ...RespondingDevice[]];
      const claimed = new ObjectId().toHexString();
      await plantStaleClaim(left.database.url, left.rollout.id, delivered.deviceName, claimed);
      left.slowUntil(delivered.deviceName, 2);
      await publishUpgrade(left.broker.url, left.productName, delivered.deviceName, claimed, left.firmware);
      await eventually(() => expect(delivered.upgrades).toHaveLength(1));
      const plantedSeq = (await storedExecutions(left.database.url, left.rollout.id)).find((x) => x.deviceName === delivered.deviceName)?.seq;

      const second = await startApp(left.options);
      await redis.stop();
      await gqlOk(second, ResumeRolloutDocument, { id: left.rollout.id });
      // A pass has run its sends, and they failed: the stale claim was taken again (its seq moved on), and every
      // other device was claimed and released (QUEUED, unclaimed, with a claim time). The sends of one pass run together.
      await eventually(async () => {
        const now = await storedExecutions(left.database.url, left.rollout.id, { afterCrash: false });
        expect(now.find((x) => x.deviceName === delivered.deviceName)?.seq).toBeGreaterThan(plantedSeq ?? Infinity);
        const othersNow = now.filter((x) => x.deviceName !== delivered.deviceName);
        expect(othersNow.filter((x) => x.state !== "QUEUED" || x.dispatchRequestId !== null || x.dispatchedAt === null)).toEqual([]);
      }, 15_000);
      await redis.resume();

      // The device had the claimed command; what it receives again is that same command.
      await eventually(() => expect(delivered.upgrades.length).toBeGreaterThanOrEqual(2), 15_000);
      expect(delivered.upgrades.map((u) => u.requestId)).toEqual([claimed, claimed]);
      await rolloutIn(second, left.rollout.id, ["COMPLETED"]);
      const executions = new Map((await executionsOf(second, left.rollout.id)).map((x) => [x.deviceName, x]));
      expect(executions.get(delivered.deviceName)?.attempts.map((a) => a.requestId)).toEqual([claimed]);
      expect([...executions.values()].filter((x) => x.state !== "SUCCEEDED" || x.attempts.length !== 1)).toEqual([]);
      for (const d of others) expect(d.upgrades.map((u) => u.requestId)).toEqual(executions.get(d.deviceName)?.attempts.map((a) => a.requestId));
    },
    60_000,
  );
});
