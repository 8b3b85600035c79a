import { basename } from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { DeleteFirmwareDocument, FirmwareDocument, FirmwaresDocument, type FirmwareFieldsFragment } from "../client/generated/graphql.js";
import { pagesOf } from "./api.client.js";
import { clientCommand, commandGroup, flag, parseFlags } from "./cli.command.js";
import { ApiError } from "./cli.errors.js";
import { bar, bytes, fields, json, LiveView, print, table } from "./cli.output.js";
import { uploadFile, type Transfer } from "./firmware.upload.js";

type Firmware = FirmwareFieldsFragment;

const uploadFlags = z.object({
  product: flag.required,
  version: flag.required,
  type: z.string().min(1, "must not be empty").default("firmware"),
  quiet: z.boolean().optional(),
});

const listFlags = z.object({ product: flag.required, first: flag.int(1, 100).optional(), after: z.string().optional(), all: z.boolean().optional() });

function firmwareBlock(a: Firmware, more: [string, string][] = []): string {
  return fields([
    ["firmware", a.id],
    ...more,
    ["product", a.productName],
    ["version", a.version],
    ["type", a.type],
    ["size", `${a.size} bytes (${bytes(a.size)})`],
    ["md5", a.md5],
    ["sha256", a.sha256],
    ["created", a.createdAt],
  ]);
}

/**
 * An upload's progress, on stderr (stdout keeps the artifact, --json or
 * --quiet): a bar redrawn in place on a terminal; off one, a line when each
 * pass is through, none per chunk.
 */
function transferView(file: string): LiveView<Transfer> {
  const name = basename(file);
  return new LiveView<Transfer>(
    { json: false },
    {
      block: (t) => [`${t.phase.padEnd(9)}  ${name}  ${bar(t.done, t.total)}  ${bytes(t.done)} / ${bytes(t.total)}`],
      line: (t) => (t.done === t.total ? `${t.phase === "hashing" ? "hashed" : "sent"} ${name}: ${t.total} bytes` : null),
      json: (t) => t,
    },
    process.stderr,
  );
}

export function registerFirmwareCommands(program: Command): void {
  const firmware = commandGroup(
    program,
    "firmware",
    "uploaded firmware artifacts, which ota send and rollouts take by --firmware-id: upload, list, show, delete",
    "iothub-ota firmware upload --product demo --version 2.0 build/demo-2.0.bin",
  );

  clientCommand(
    firmware,
    "upload <file>",
    "upload a firmware file as the artifact of a product's version (streamed, its md5 and sha256 checked by the server); prints the artifact, and whether it was stored new or already there",
    `iothub-ota firmware upload --product demo --version 2.0 build/demo-2.0.bin
fw=$(iothub-ota firmware upload --product demo --version 2.0 build/demo-2.0.bin --quiet)
iothub-ota rollout create --product demo --tag beta --firmware-id "$fw" --wave 10% --wave 100%`,
    async ({ api, json: asJson }, [file], o) => {
      const f = parseFlags(uploadFlags, o);
      const view = transferView(file as string);
      const { artifact, created } = await uploadFile(api, file as string, { productName: f.product, version: f.version, type: f.type }, (t) => view.update(t));
      if (f.quiet) return print(artifact.id);
      if (asJson) return json({ ...artifact, created });
      print(firmwareBlock(artifact, [["stored", created ? "new" : "already: these bytes were stored under this version before"]]));
    },
  )
    .option("--product <name>", "the product")
    .option("--version <v>", "the firmware version it is (one image per version and type)")
    .option("--type <type>", 'firmware type (default "firmware")')
    .option("-q, --quiet", "print only the artifact's id");

  clientCommand(
    firmware,
    "list",
    "list a product's artifacts, newest first",
    "iothub-ota firmware list --product demo --all",
    async ({ api, json: asJson }, _args, o) => {
      const f = parseFlags(listFlags, o);
      const { nodes, pageInfo } = await pagesOf<Firmware>(
        async (after) => (await api.request(FirmwaresDocument, { productName: f.product, first: f.first ?? (f.all ? 100 : 50), after })).firmwares,
        f,
      );
      if (asJson) return json({ firmwares: nodes, pageInfo });
      print(table(["ID", "VERSION", "TYPE", "SIZE", "SHA256", "CREATED"], nodes.map((a) => [a.id, a.version, a.type, a.size, a.sha256.slice(0, 12), a.createdAt])));
      if (pageInfo.hasNextPage) process.stderr.write(`more: --after ${pageInfo.endCursor} (or --all)\n`);
    },
  )
    .option("--product <name>", "the product")
    .option("--first <n>", "page size, 1..100 (default 50; 100 with --all)")
    .option("--after <cursor>", "the page after this cursor")
    .option("--all", "every page");

  clientCommand(firmware, "show <id>", "show an artifact: version, type, size, md5, sha256", "iothub-ota firmware show 0d4f6c1e-7a2b-4c3d-9e8f-1a2b3c4d5e6f", async ({ api, json: asJson }, [id]) => {
    const { firmware: a } = await api.request(FirmwareDocument, { id: id as string });
    if (!a) throw new ApiError([{ code: "NOT_FOUND", message: `firmware ${id} not found` }]);
    if (asJson) return json(a);
    print(firmwareBlock(a));
  });

  clientCommand(
    firmware,
    "delete <id>",
    "delete an artifact and its bytes (an admin token); refused (FIRMWARE_IN_USE) while a rollout uses it",
    "iothub-ota firmware delete 0d4f6c1e-7a2b-4c3d-9e8f-1a2b3c4d5e6f",
    async ({ api, json: asJson }, [id]) => {
      const { deleteFirmware: a } = await api.request(DeleteFirmwareDocument, { id: id as string });
      if (asJson) return json(a);
      print(`firmware ${a.id} deleted (${a.productName} ${a.version}, ${a.type})`);
    },
  );
}
