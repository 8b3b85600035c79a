import express, { type NextFunction, type Request, type Response, type Router } from "express";
import type { DeviceService } from "../devices/device.service.js";
import { AppError, ErrorCode } from "../errors.js";
import type { Logger } from "../logger.js";
import type { OtaService } from "../ota/ota.service.js";
import { restView } from "../ota/progress.model.js";

/** Form fields arrive as strings; the seed parsed `size` with parseInt. */
function toSize(value: unknown): unknown {
  return typeof value === "string" && /^\d+$/.test(value.trim()) ? Number(value) : value;
}

const STATUS: Record<ErrorCode, number> = {
  [ErrorCode.DEVICE_NOT_FOUND]: 400,
  [ErrorCode.DEVICE_SUSPENDED]: 400,
  [ErrorCode.DEVICE_EXISTS]: 409,
  [ErrorCode.BAD_USER_INPUT]: 400,
  [ErrorCode.UNAUTHENTICATED]: 401,
  [ErrorCode.FORBIDDEN]: 403,
  [ErrorCode.BROKER_UNAVAILABLE]: 503,
  [ErrorCode.COMMAND_UNCONFIRMED]: 504,
  [ErrorCode.INTERNAL_SERVER_ERROR]: 500,
};

/**
 * The IotHub business REST API (PROTOCOL.md), answering as the seed server
 * did, on the same services as the GraphQL resolvers.
 */
export function restRoutes(devices: DeviceService, ota: OtaService, log: Logger): Router {
  const router = express.Router();
  router.use(express.json({ limit: "64kb" }), express.urlencoded({ extended: false, limit: "64kb" }));

  router.post("/ota/:productName/:deviceName", async (req, res) => {
    const body = (req.body ?? {}) as Record<string, unknown>;
    await ota.send({
      productName: req.params.productName as string,
      deviceName: req.params.deviceName as string,
      firmware: { url: body.url, version: body.version, size: toSize(body.size), md5: body.md5, type: body.type },
    });
    res.status(200).type("text/plain").send("ok");
  });

  router.get("/ota/:productName/:deviceName", async (req, res) => {
    const record = await ota.progressOf(req.params.productName as string, req.params.deviceName as string);
    res.status(200).json(record ? restView(record) : {});
  });

  router.post("/devices", async (req, res) => {
    const body = (req.body ?? {}) as Record<string, unknown>;
    const tags = body.tags === undefined ? undefined : Array.isArray(body.tags) ? body.tags : [body.tags];
    const { device, secret } = await devices.register({
      productName: body.product_name as string,
      deviceName: body.device_name as string | undefined,
      tags: tags as string[] | undefined,
    });
    res.status(200).json({ product_name: device.productName, device_name: device.deviceName, secret });
  });

  router.get("/devices/:productName/:deviceName", async (req, res) => {
    const d = await devices.find(req.params.productName as string, req.params.deviceName as string);
    if (!d) return void res.status(404).type("text/plain").send("device not found");
    res.status(200).json({
      product_name: d.productName,
      device_name: d.deviceName,
      device_status: d.status ?? {},
      tags: d.tags,
      tags_version: d.tagsVersion,
      firmware_version: d.firmwareVersion,
      last_status_at: d.lastStatusAt,
      suspended: d.suspended,
      created_at: d.createdAt,
    });
  });

  router.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (err instanceof AppError) {
      // The seed answered an unknown device with exactly this text.
      const text = err.code === ErrorCode.DEVICE_NOT_FOUND ? "device not found" : err.message;
      return void res.status(STATUS[err.code]).type("text/plain").send(text);
    }
    const status = (err as { status?: unknown }).status;
    if (typeof status === "number" && status >= 400 && status < 500) {
      return void res.status(status).type("text/plain").send("bad request body");
    }
    log.error({ err }, "REST request failed");
    res.status(500).type("text/plain").send("internal server error");
  });
  return router;
}
