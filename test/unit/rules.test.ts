import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/config.js";
import { checkFirmware, checkTtl } from "../../src/ota/firmware.js";
import { phaseOf, recordFromReport, restView, succeedIfVersion } from "../../src/ota/progress.model.js";
import { checkName, checkTags } from "../../src/protocol/names.js";

describe("name rules", () => {
  it("accepts [A-Za-z0-9_.:-] up to 64 characters", () => {
    expect(checkName("deviceName", "dev_1.a:b-c").ok).toBe(true);
    expect(checkName("deviceName", "x".repeat(64)).ok).toBe(true);
  });

  it.each(["", "x".repeat(65), "a/b", "a+b", "a#", "$sys", "a b", "a\u0000", "ü"])("refuses %j", (name) => {
    expect(checkName("deviceName", name).ok).toBe(false);
  });

  it("de-duplicates tags and refuses bad ones", () => {
    expect(checkTags(["a", "b", "a"])).toEqual({ ok: true, value: ["a", "b"] });
    expect(checkTags(["ok", "no/slash"]).ok).toBe(false);
    expect(checkTags([1]).ok).toBe(false);
  });
});

describe("state derivation", () => {
  it("derives downloading, downloaded and each failure reason", () => {
    expect(phaseOf(0)).toEqual({ state: "DOWNLOADING", failureReason: null });
    expect(phaseOf(99)).toEqual({ state: "DOWNLOADING", failureReason: null });
    expect(phaseOf(100)).toEqual({ state: "DOWNLOADED", failureReason: null });
    expect(phaseOf(-1)).toEqual({ state: "FAILED", failureReason: "DOWNLOAD_FAILED" });
    expect(phaseOf(-2)).toEqual({ state: "FAILED", failureReason: "MD5_MISMATCH" });
    expect(phaseOf(-3)).toEqual({ state: "FAILED", failureReason: "INSTALL_FAILED" });
    expect(phaseOf(-4)).toEqual({ state: "FAILED", failureReason: "OTHER" });
  });

  const record = recordFromReport(
    { productName: "p", deviceName: "d" },
    { version: "1.1", type: "firmware", progress: 100, desc: "", raw: { version: "1.1", progress: 100 } },
    "m",
    1_700_000_000_500,
  );

  it("succeeds only on the target version, once", () => {
    expect(succeedIfVersion(record, "1.0", 1_700_000_009_000)).toBeNull();
    expect(succeedIfVersion(record, undefined, 1_700_000_009_000)).toBeNull();
    const done = succeedIfVersion(record, "1.1", 1_700_000_009_000);
    expect(done).toMatchObject({ state: "SUCCEEDED", failureReason: null, progress: 100, receivedAt: 1_700_000_009_000 });
    expect(succeedIfVersion(done!, "1.1", 1_700_000_010_000)).toBeNull();
  });

  it("shows REST clients the raw report with ts in Unix seconds", () => {
    expect(restView(record)).toEqual({ version: "1.1", progress: 100, ts: 1_700_000_000 });
  });
});

describe("firmware validation", () => {
  const good = { url: "https://fw.example/1.1.bin", version: "1.1", size: 1000, md5: "d41d8cd98f00b204e9800998ecf8427e", type: "firmware" };

  it("accepts a good firmware description", () => {
    expect(checkFirmware(good)).toEqual({ ok: true, value: good });
  });

  it.each([
    ["url", { url: "ftp://x/y" }],
    ["url", { url: "not a url" }],
    ["size", { size: 0 }],
    ["size", { size: 1.5 }],
    ["md5", { md5: "abc" }],
    ["md5", { md5: "z".repeat(32) }],
    ["version", { version: "" }],
    ["version", { version: "v".repeat(65) }],
    ["type", { type: "  " }],
  ])("names %s as the field at fault", (field, patch) => {
    expect(checkFirmware({ ...good, ...patch })).toMatchObject({ ok: false, reason: field });
  });

  it("turns a TTL into expiresAt in Unix seconds", () => {
    expect(checkTtl(60, 1_700_000_000_999)).toEqual({ ok: true, value: 1_700_000_060 });
    expect(checkTtl(undefined, 0)).toEqual({ ok: true, value: undefined });
    expect(checkTtl(0, 0).ok).toBe(false);
  });
});

describe("configuration", () => {
  it("has embedded defaults", () => {
    const c = loadConfig({});
    expect(c.httpPort).toBe(4000);
    expect(c.broker).toMatchObject({ kind: "embedded", port: 1883, tlsPort: 8883 });
    expect(c.database).toEqual({ kind: "pglite", dataDir: "./data/pglite" });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("disables a listener with port 0 and switches to external services when given URLs", () => {
    const c = loadConfig({ MQTTS_PORT: "0", MQTT_URL: "mqtt://broker:1883", DATABASE_URL: "postgres://x/y" });
    expect(c.broker).toMatchObject({ kind: "external", url: "mqtt://broker:1883", shareGroup: "iothub-ota", tlsInsecure: false });
    expect(loadConfig({ MQTT_URL: "mqtts://b:8883", MQTT_TLS_INSECURE: "true" }).broker).toMatchObject({ tlsInsecure: true });
    expect(c.database).toEqual({ kind: "postgres", url: "postgres://x/y" });
    expect(loadConfig({ MQTTS_PORT: "0" }).broker).toMatchObject({ tlsPort: null });
  });

  it.each([
    ["PORT", { PORT: "http" }],
    ["MQTT_PORT", { MQTT_PORT: "70000" }],
    ["REDIS_URL", { REDIS_URL: "localhost:6379" }],
    ["LOG_LEVEL", { LOG_LEVEL: "loud" }],
    ["ADMIN_TOKEN", { ADMIN_TOKEN: "short" }],
    ["TLS_KEY_FILE", { TLS_CERT_FILE: "/x.pem" }],
    ["MQTT_TLS_INSECURE", { MQTT_TLS_INSECURE: "maybe" }],
    ["CORS_ORIGINS", { CORS_ORIGINS: "https://ok.example, not an origin" }],
  ])("names %s when it is invalid", (name, env) => {
    expect(() => loadConfig(env)).toThrow(name);
  });
});
