import type { DeviceService } from "../devices/device.service.js";
import { requireName } from "../devices/device.service.js";
import { AppError, ErrorCode, badInput } from "../errors.js";
import type { Logger } from "../logger.js";
import { newObjectId } from "../protocol/object-id.js";
import { buildCommandTopic, type CommandTarget } from "../protocol/topics.js";
import { checkFirmware, checkTtl } from "./firmware.js";
import {
  checkIdempotencyKey,
  fingerprintOf,
  replay,
  type IdempotencyStore,
  type SentCommand,
} from "./idempotency.js";
import type { ArtifactService } from "../firmware/artifact.service.js";
import type { UrlSubject } from "../firmware/url.signer.js";
import type { CommandPublisher, ProgressStore } from "./ports.js";
import type { ProgressRecord } from "./progress.model.js";

export interface SendOtaInput {
  productName: string;
  deviceName?: string | null;
  tag?: string | null;
  /** Exactly one of firmware (url, version, size, md5, type) and firmwareId (an uploaded artifact). */
  firmware?: Record<string, unknown> | null;
  firmwareId?: string | null;
  ttlSeconds?: number | null;
  /** A retried request with the same key never sends twice: it gets the first result, or an error saying why not. */
  idempotencyKey?: string | null;
}

export interface SendOtaResult extends SentCommand {
  /** Registered devices the command reaches now: 1 for a device, those holding the tag (suspended ones excluded) for a tag; null: unknown. */
  targeted: number | null;
  /** Set when the command reaches no device: it was sent, and nothing will happen. */
  warning: string | null;
}

export interface OtaServiceOptions {
  /** Uploaded artifacts: a send by firmwareId gets its fields and a download URL signed for the target. */
  artifacts: ArtifactService;
  /** How long a command may wait in an offline device's session (OFFLINE_COMMAND_TTL_SECONDS): a URL's life when the command has no TTL. */
  offlineCommandTtlSeconds: number;
  idempotency: IdempotencyStore;
  /** How long a first request with a key may still be publishing (past it, a retry is told it ended unconfirmed). */
  inFlightMs: number;
  /** How long a key is remembered (IDEMPOTENCY_TTL_SECONDS). */
  idempotencyTtlSeconds: number;
  log: Logger;
  now?: () => number;
}

/** Sending upgrades and reading their progress. */
export class OtaService {
  private readonly now: () => number;

  constructor(
    private readonly devices: DeviceService,
    private readonly commands: CommandPublisher,
    private readonly progress: ProgressStore,
    private readonly options: OtaServiceOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** Publishes `$ota_upgrade` at QoS 1 to one device or to a tag (PROTOCOL.md, `$ota_upgrade`). */
  async send(input: SendOtaInput): Promise<SendOtaResult> {
    const productName = requireName("productName", input.productName);
    const byDevice = input.deviceName != null;
    if (byDevice === (input.tag != null)) throw badInput("deviceName", "give exactly one of deviceName and tag");
    const target: CommandTarget = byDevice
      ? { productName, deviceName: requireName("deviceName", input.deviceName) }
      : { productName, tag: requireName("tag", input.tag) };
    if ((input.firmwareId != null) === (input.firmware != null)) throw badInput("firmwareId", "give exactly one of firmware and firmwareId");
    const now = this.now();
    const ttl = checkTtl(input.ttlSeconds, now);
    if (!ttl.ok) throw badInput("ttlSeconds", ttl.message);
    const payload = await this.#payload(input, target, ttl.value ?? Math.floor(now / 1000) + this.options.offlineCommandTtlSeconds);
    const key = input.idempotencyKey == null ? undefined : checkIdempotencyKey(input.idempotencyKey);
    if (target.deviceName !== undefined) await this.devices.requireActive(productName, target.deviceName);

    const publish = async (requestId: string): Promise<SentCommand> => {
      const topic = buildCommandTopic({ target, command: "$ota_upgrade", encoding: "plain", requestId, expiresAt: ttl.value });
      await this.commands.publishCommand(topic, JSON.stringify(payload.firmware));
      return { requestId, topic, expiresAt: ttl.value ?? null };
    };
    const sent =
      key === undefined
        ? await publish(newObjectId())
        : await this.#sendOnce(productName, key, fingerprintOf({ target, firmware: payload.identity, ttlSeconds: input.ttlSeconds ?? null }), publish);
    return { ...sent, ...(await this.#reach(productName, target)) };
  }

  /**
   * The `$ota_upgrade` payload, and what identifies it for idempotency (an
   * artifact's signed URL differs per send: its id does not). An artifact's
   * URL lives as long as the command: its TTL, or the longest a session keeps it.
   */
  async #payload(input: SendOtaInput, target: CommandTarget, urlExpiresAt: number): Promise<{ firmware: object; identity: object }> {
    if (input.firmwareId != null) {
      const artifact = await this.options.artifacts.forProduct(target.productName, input.firmwareId);
      const subject: UrlSubject = target.deviceName !== undefined ? { kind: "device", name: target.deviceName } : { kind: "tag", name: target.tag as string };
      return { firmware: this.options.artifacts.firmwareFor(artifact, subject, urlExpiresAt), identity: { firmwareId: artifact.id } };
    }
    const firmware = checkFirmware(input.firmware as Record<string, unknown>);
    if (!firmware.ok) throw badInput(`firmware.${firmware.reason}`, firmware.message);
    return { firmware: firmware.value, identity: firmware.value };
  }

  /** Whom a sent command reaches now: counted after the send, best effort (a tag send needs the broker, not the registry). */
  async #reach(productName: string, target: CommandTarget): Promise<Pick<SendOtaResult, "targeted" | "warning">> {
    if (target.tag === undefined) return { targeted: 1, warning: null };
    let targeted: number;
    try {
      targeted = await this.devices.countWithTag(productName, target.tag);
    } catch (err) {
      this.options.log.warn({ err, productName, tag: target.tag }, "could not count the devices of a tag sent to");
      return { targeted: null, warning: "sent; how many devices hold the tag is unknown now (the registry could not be read)" };
    }
    const warning =
      targeted > 0 ? null : `no registered device of product ${productName} holds tag ${target.tag} (suspended ones excepted): the command reaches nobody now`;
    return { targeted, warning };
  }

  /**
   * Publishes at most once per idempotency key (kept 24 h, per product): the
   * key is claimed before publishing; nothing sent (BROKER_UNAVAILABLE)
   * frees it for a retry, anything else that is not a confirmed send is kept
   * as "unconfirmed", so that a retry never sends a second time.
   */
  async #sendOnce(productName: string, key: string, fingerprint: string, publish: (requestId: string) => Promise<SentCommand>): Promise<SentCommand> {
    const { idempotency, inFlightMs, log, idempotencyTtlSeconds: ttl } = this.options;
    const scope = `sendOta/${productName}`;
    const held = await idempotency.claim(scope, key, { state: "pending", fingerprint, since: this.now() }, ttl);
    if (held) return replay(held, fingerprint, this.now(), inFlightMs);
    const requestId = newObjectId();
    let result: SentCommand;
    try {
      result = await publish(requestId);
    } catch (err) {
      const nothingSent = err instanceof AppError && err.code === ErrorCode.BROKER_UNAVAILABLE;
      try {
        if (nothingSent) await idempotency.release(scope, key);
        else await idempotency.settle(scope, key, { state: "unconfirmed", fingerprint, requestId }, ttl);
      } catch (storeErr) {
        // The key stays "pending": a retry is told the first did not finish, and nothing is sent twice.
        log.error({ err: storeErr, productName, requestId }, "could not record the outcome of an idempotent sendOta");
      }
      throw err;
    }
    try {
      await idempotency.settle(scope, key, { state: "sent", fingerprint, result }, ttl);
    } catch (err) {
      // The command went out: answer it. A retry finds the key "pending" and is refused, never sent twice.
      log.error({ err, productName, requestId }, "could not record a sent idempotent sendOta");
    }
    return result;
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
