import type { DeviceService } from "../devices/device.service.js";
import { requireName } from "../devices/device.service.js";
import { badInput } from "../errors.js";
import { newObjectId } from "../protocol/object-id.js";
import { buildCommandTopic, type CommandTarget } from "../protocol/topics.js";
import { checkFirmware, checkTtl } from "./firmware.js";
import type { CommandPublisher, ProgressStore } from "./ports.js";
import type { ProgressRecord } from "./progress.model.js";

export interface SendOtaInput {
  productName: string;
  deviceName?: string | null;
  tag?: string | null;
  firmware: Record<string, unknown>;
  ttlSeconds?: number | null;
}

export interface SendOtaResult {
  requestId: string;
  topic: string;
  expiresAt: number | null;
}

/** Sending upgrades and reading their progress. */
export class OtaService {
  constructor(
    private readonly devices: DeviceService,
    private readonly commands: CommandPublisher,
    private readonly progress: ProgressStore,
    private readonly now: () => number = Date.now,
  ) {}

  /** Publishes `$ota_upgrade` at QoS 1 to one device or to a tag (PROTOCOL.md, `$ota_upgrade`). */
  async send(input: SendOtaInput): Promise<SendOtaResult> {
    const productName = requireName("productName", input.productName);
    const byDevice = input.deviceName != null;
    if (byDevice === (input.tag != null)) throw badInput("deviceName", "give exactly one of deviceName and tag");
    const target: CommandTarget = byDevice
      ? { productName, deviceName: requireName("deviceName", input.deviceName) }
      : { productName, tag: requireName("tag", input.tag) };
    const firmware = checkFirmware(input.firmware);
    if (!firmware.ok) throw badInput(`firmware.${firmware.reason}`, firmware.message);
    const ttl = checkTtl(input.ttlSeconds, this.now());
    if (!ttl.ok) throw badInput("ttlSeconds", ttl.message);
    if (target.deviceName !== undefined) await this.devices.requireActive(productName, target.deviceName);

    const requestId = newObjectId();
    const topic = buildCommandTopic({ target, command: "$ota_upgrade", encoding: "plain", requestId, expiresAt: ttl.value });
    await this.commands.publishCommand(topic, JSON.stringify(firmware.value));
    return { requestId, topic, expiresAt: ttl.value ?? null };
  }

  async progressOf(productName: string, deviceName: string): Promise<ProgressRecord | null> {
    return this.progress.get(requireName("productName", productName), requireName("deviceName", deviceName));
  }

  /** Many devices' progress in one Redis round trip, in the order asked. */
  async progressOfMany(productName: string, deviceNames: readonly string[]): Promise<(ProgressRecord | null)[]> {
    requireName("productName", productName);
    if (deviceNames.length > 10_000) throw badInput("deviceNames", "at most 10000 names");
    for (const name of deviceNames) requireName("deviceName", name);
    return this.progress.getMany(productName, deviceNames);
  }
}
