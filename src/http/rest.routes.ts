import express, { type NextFunction, type Request, type RequestHandler, type Response, type Router } from "express";
import { requireAccess, type Access, type Principal } from "../auth/principal.js";
import type { DeviceService } from "../devices/device.service.js";
import { AppError, ErrorCode, InputProblems, type InputProblem } from "../errors.js";
import { firmwareProblems } from "../ota/firmware.js";
import type { OtaService } from "../ota/ota.service.js";
import { checkName, checkTags } from "../protocol/names.js";
import { restView } from "../ota/progress.model.js";
import { sendError } from "./errors.js";

/** Form fields arrive as strings; the seed parsed `size` with parseInt. */
function toSize(value: unknown): unknown {
  return typeof value === "string" && /^\d+$/.test(value.trim()) ? Number(value) : value;
}

/** The IotHub name of an API field (PROTOCOL.md's REST fields are snake_case; firmware fields sit at the top level). */
const iothubField = (field: string) =>
  ({ productName: "product_name", deviceName: "device_name", idempotencyKey: "Idempotency-Key", firmwareId: "firmware_id" })[field] ?? field.replace(/^firmware\./, "");

/** Every problem of these names at once, by their IotHub field. */
function nameProblems(names: Record<string, unknown>): InputProblem[] {
  const problems: InputProblem[] = [];
  for (const [field, value] of Object.entries(names)) {
    const r = field === "tags" ? checkTags(value as unknown[]) : checkName(field === "product_name" ? "productName" : "deviceName", value);
    if (!r.ok) problems.push({ field, message: r.message.replace(/^(productName|deviceName|tags:) ?/, "") });
  }
  return problems;
}

/** Refuses the request (400, one error per field) unless there is nothing wrong. */
function refuseProblems(problems: InputProblem[]): void {
  if (problems.length > 0) throw new InputProblems(problems);
}

const principal = (res: Response) => res.locals.principal as Principal;

/** The permission check on the product in the path, before any body is read. */
const may =
  (need: Access): RequestHandler =>
  (req: Request, res: Response, next: NextFunction) => {
    requireAccess(principal(res), need, req.params.productName as string);
    next();
  };

/**
 * The IotHub business REST API (PROTOCOL.md), on the same services as the
 * GraphQL resolvers and under the same permission check.
 *
 * Answers: what PROTOCOL.md spells out stays as the seed server sent it:
 * `POST /ota` answers `200 ok` and `400 device not found` in plain text.
 * Every other error, on every route, is JSON in GraphQL's error shape
 * (`{"errors":[{"message","extensions":{"code"}}]}`), with the status of its code.
 */
export function restRoutes(devices: DeviceService, ota: OtaService, authenticate: RequestHandler, bodyLimit: number): Router {
  const router = express.Router();
  const body = [express.json({ limit: bodyLimit }), express.urlencoded({ extended: false, limit: bodyLimit })];

  router.post("/ota/:productName/:deviceName", authenticate, may("write"), ...body, async (req, res) => {
    const { productName, deviceName } = req.params as { productName: string; deviceName: string };
    const fields = (req.body ?? {}) as Record<string, unknown>;
    // An uploaded artifact (firmware_id) instead of url, size, md5, version and type.
    const firmwareId = fields.firmware_id;
    const firmware = firmwareId === undefined ? { url: fields.url, version: fields.version, size: toSize(fields.size), md5: fields.md5, type: fields.type } : null;
    const idProblem = firmwareId !== undefined && typeof firmwareId !== "string" ? [{ field: "firmware_id", message: "must be a firmware id" }] : [];
    refuseProblems([...nameProblems({ product_name: productName, device_name: deviceName }), ...(firmware ? firmwareProblems(firmware) : idProblem)]);
    try {
      await ota.send({
        productName,
        deviceName,
        firmware,
        firmwareId: firmwareId as string | undefined,
        idempotencyKey: req.get("idempotency-key"),
      });
    } catch (err) {
      // The seed answered an unknown device with exactly this.
      if (err instanceof AppError && err.code === ErrorCode.DEVICE_NOT_FOUND) return void res.status(400).type("text/plain").send("device not found");
      throw err;
    }
    res.status(200).type("text/plain").send("ok");
  });

  router.get("/ota/:productName/:deviceName", authenticate, may("read"), async (req, res) => {
    const { productName, deviceName } = req.params as { productName: string; deviceName: string };
    const record = await ota.progressOf(productName, deviceName);
    res.status(200).json(record ? restView(record) : {});
  });

  router.post("/devices", authenticate, ...body, async (req, res) => {
    const fields = (req.body ?? {}) as Record<string, unknown>;
    const productName = fields.product_name;
    requireAccess(principal(res), "admin", typeof productName === "string" ? productName : undefined);
    const tags = fields.tags === undefined ? undefined : Array.isArray(fields.tags) ? fields.tags : [fields.tags];
    refuseProblems(
      nameProblems({
        product_name: productName,
        ...(fields.device_name === undefined ? {} : { device_name: fields.device_name }),
        ...(tags === undefined ? {} : { tags }),
      }),
    );
    const { device, secret } = await devices.register({
      productName: productName as string,
      deviceName: fields.device_name as string | undefined,
      tags: tags as string[] | undefined,
    });
    res.status(200).json({ product_name: device.productName, device_name: device.deviceName, secret });
  });

  router.get("/devices/:productName/:deviceName", authenticate, may("read"), async (req, res) => {
    const { productName, deviceName } = req.params as { productName: string; deviceName: string };
    const d = await devices.find(productName, deviceName);
    if (!d) return sendError(res, ErrorCode.DEVICE_NOT_FOUND, `device ${productName}/${deviceName} not found`);
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

  // What the services refuse is named as the REST caller named it.
  router.use((err: unknown, _req: Request, _res: Response, next: NextFunction) => {
    const renamed = err instanceof AppError && err.field !== undefined && !(err instanceof InputProblems);
    next(renamed ? new InputProblems([{ field: iothubField(err.field as string), message: err.message.replace(/^[^:]*: /, "") }]) : err);
  });
  return router;
}
