// References, each run in a process of its own beside the server under test:
//   bare: a subscriber that only counts (the broker's ceiling);
//   seed: the original IotHub server's ingest (the design this project started from): per message a
//         regex match, SETNX and EXPIRE on the messageId, then SET of the
//         progress JSON, each its own Redis round trip.
//         Both print {"count", "firstAt", "lastAt"} once `expect` messages were handled.
//   rest: the original IotHub server's own REST read
//         (`GET /ota/:productName/:deviceName`: Express, one Redis GET, the JSON
//         parsed and sent back, `{}` when absent); no token check, as the seed had none.
//         `rest <port> <redisUrl>` prints "ready" once listening.
import express from "express";
import { Redis } from "ioredis";
import mqtt from "mqtt";

const [mode, url, filter, expectArg, redisUrl] = process.argv.slice(2);

async function restReference(port: number, redisUrl: string): Promise<void> {
  const redisClient = new Redis(redisUrl);
  const app = express();
  app.get("/ota/:productName/:deviceName", (req, res) => {
    const { productName, deviceName } = req.params;
    // The seed's OTAService.getProgress and its route.
    void redisClient.get(`ota_progress/${productName}/${deviceName}`, (_err, value) => {
      res.status(200).json(value != null ? JSON.parse(value) : {});
    });
  });
  await new Promise<void>((resolve) => app.listen(port, "127.0.0.1", () => resolve()));
  process.stdout.write("ready\n");
}

async function ingestReference(): Promise<void> {
  const expected = Number(expectArg);
  const nowMs = () => performance.timeOrigin + performance.now();
  const statusRegx = /^(update_status|update_ota_status)\/([^/]+)\/([^/]+)\/([^/]+)$/;

  const redis = mode === "seed" ? new Redis(redisUrl as string) : undefined;
  let count = 0;
  let firstAt = 0;
  let lastAt = 0;
  const done = () => {
    lastAt = nowMs();
    if (++count === expected) {
      process.stdout.write(`${JSON.stringify({ count, firstAt, lastAt })}\n`);
      process.exit(0);
    }
  };

  const client = await mqtt.connectAsync(url as string, { clean: true, reconnectPeriod: 0 });
  client.on("message", (topic, payload) => {
    if (firstAt === 0) firstAt = nowMs();
    if (!redis) return done();
    const result = statusRegx.exec(topic);
    if (!result) return;
    // The seed's checkMessageDuplication, then OTAService.updateProgress.
    const key = `/messageIDs/${result[4]}`;
    void redis.setnx(key, "", (err, isNew) => {
      if (err || isNew !== 1) return done();
      void redis.expire(key, 60 * 60 * 6);
      const progress = JSON.parse(payload.toString()) as Record<string, unknown>;
      progress.ts = Math.floor(Date.now() / 1000);
      void redis.set(`ota_progress/${result[2]}/${result[3]}`, JSON.stringify(progress), () => done());
    });
  });
  await client.subscribeAsync(filter as string, { qos: 1 });
  process.stdout.write("ready\n");
}

if (mode === "rest") await restReference(Number(url), filter as string);
else await ingestReference();
