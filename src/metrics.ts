import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";

/** Every metric the server exports, on a registry of its own (no global state). */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "iothub_ota_" });
  return {
    registry,
    ingest: new Counter({
      name: "iothub_ota_ingest_messages_total",
      help: "Device messages taken in, by kind and outcome (accepted, duplicate, stale, ignored, failed, malformed, unacknowledged).",
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
    refused: new Counter({
      name: "iothub_ota_refused_total",
      help:
        "What was refused or dropped, by kind and reason: from devices on the embedded broker (connect, publish, subscribe, will, retain, packet, session) " +
        "from API clients (http, graphql, ws), and EMQX's authentication and authorization calls denied (emqx_authn, emqx_authz).",
      labelNames: ["kind", "reason"] as const,
      registers: [registry],
    }),
    ingestRetries: new Counter({
      name: "iothub_ota_ingest_retries_total",
      help: "Device messages whose processing failed (a dependency down) and was tried again, by kind.",
      labelNames: ["kind"] as const,
      registers: [registry],
    }),
    unacknowledged: new Counter({
      name: "iothub_ota_ingest_unacknowledged_total",
      help: "Device messages left unacknowledged because their effect could not be made durable (the device sends them again).",
      labelNames: ["kind"] as const,
      registers: [registry],
    }),
    subscriberOverflow: new Counter({
      name: "iothub_ota_subscriber_overflow_total",
      help: "Reports a slow subscriber did not get because a newer report of the same device replaced them in its full queue.",
      registers: [registry],
    }),
    rolloutLagging: new Counter({
      name: "iothub_ota_rollout_reports_deferred_total",
      help: "Stored progress reports whose rollout execution could not be updated at once (database unavailable); the scheduler applies them from the stored progress.",
      registers: [registry],
    }),
    commands: new Counter({
      name: "iothub_ota_commands_sent_total",
      help: "Commands published to devices, by command.",
      labelNames: ["command"] as const,
      registers: [registry],
    }),
    firmwareBytes: new Counter({
      name: "iothub_ota_firmware_bytes_served_total",
      help: "Bytes of firmware artifacts sent to devices, by artifact (product, version, type).",
      labelNames: ["product", "version", "type"] as const,
      registers: [registry],
    }),
    firmwareDownloads: new Counter({
      name: "iothub_ota_firmware_downloads_total",
      help:
        "Firmware downloads by artifact and event: started (from the first byte), resumed (a Range from further on), " +
        "completed (sent through the last byte).",
      labelNames: ["product", "version", "type", "event"] as const,
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
