import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";

/** Every metric the server exports, on a registry of its own (no global state). */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "iothub_ota_" });
  return {
    registry,
    ingest: new Counter({
      name: "iothub_ota_ingest_messages_total",
      help: "Device messages taken in, by kind and outcome (accepted, duplicate, stale, ignored, failed, malformed).",
      labelNames: ["kind", "result"] as const,
      registers: [registry],
    }),
    malformed: new Counter({
      name: "iothub_ota_ingest_malformed_total",
      help: "Device messages dropped as malformed, by reason.",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    connectedDevices: new Gauge({
      name: "iothub_ota_connected_devices",
      help: "Device connections open on the embedded broker.",
      registers: [registry],
    }),
    commands: new Counter({
      name: "iothub_ota_commands_sent_total",
      help: "Commands published to devices, by command.",
      labelNames: ["command"] as const,
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
