import { readFile } from "node:fs/promises";
import { text } from "node:stream/consumers";
import type { Command } from "commander";
import { z } from "zod";
import {
  CancelRolloutDocument,
  CreateRolloutDocument,
  PauseRolloutDocument,
  PreviewRolloutDocument,
  ResumeRolloutDocument,
  RetryRolloutDocument,
  RolloutChangedDocument,
  RolloutDocument,
  RolloutExecutionsDocument,
  RolloutsDocument,
  type ExecutionState,
  type RolloutFieldsFragment,
  type RolloutState,
} from "../client/generated/graphql.js";
import { pagesOf, type ApiClient } from "./api.client.js";
import { clientCommand, commandGroup, flag, parseFlags, reconnectPolicy, withReconnect, type CliContext } from "./cli.command.js";
import { ApiError, ExitCode } from "./cli.errors.js";
import { json, LiveView, print, table } from "./cli.output.js";
import type { ReconnectPolicy } from "./reconnect.js";
import { FAILURE_CLASSES, readInput, rolloutFlags, rolloutInputOf, rolloutOptions } from "./rollout.input.js";
import { outcome, previewBlock, rolloutBlock, rolloutTable, settled, watchBlock, watchLine, waveNumber } from "./rollout.view.js";

export const EXIT_CODES_HELP = `
Exit codes of rollout watch (and of rollout create --watch):
  0  the rollout COMPLETED with no failed or timed-out execution
  3  it COMPLETED with failures (FAILED or TIMED_OUT executions)
  4  it was ABORTED (an abort rule or a wave gate fired)
  5  it was CANCELED
  6  the connection to the server was lost and not back within --reconnect-timeout (default 5m)
  2  an error: a refused flag, an API error (its code is printed), the server unreachable, the connection closed by the server
`;

const ROLLOUT_STATES = ["ABORTED", "CANCELED", "COMPLETED", "PAUSED", "RUNNING", "SCHEDULED"] as const satisfies readonly RolloutState[];
const EXECUTION_STATES = ["CANCELED", "DOWNLOADED", "DOWNLOADING", "FAILED", "NOTIFIED", "QUEUED", "SKIPPED", "SUCCEEDED", "TIMED_OUT"] as const satisfies readonly ExecutionState[];
const upperList = <T extends readonly [string, ...string[]]>(values: T) =>
  flag.list.transform((l) => l.map((s) => s.toUpperCase())).pipe(z.array(z.enum(values, { error: `must be among ${values.join(", ")}` })));

const readSource = (source: string) => (source === "-" ? text(process.stdin) : readFile(source, "utf8"));

async function inputOf(o: Record<string, unknown>) {
  const f = parseFlags(rolloutFlags, o);
  return rolloutInputOf(f.input === undefined ? {} : await readInput(f.input, readSource), f);
}

async function rolloutOf(api: ApiClient, id: string): Promise<RolloutFieldsFragment> {
  const { rollout } = await api.request(RolloutDocument, { id });
  if (!rollout) throw new ApiError([{ code: "NOT_FOUND", message: `no rollout ${id}` }]);
  return rollout;
}

const rolloutView = (asJson: boolean) => new LiveView<RolloutFieldsFragment>({ json: asJson }, { block: watchBlock, line: watchLine, json: (r) => r });

/**
 * Follows the rollout until it has ended and nothing of it is in progress
 * (`rolloutChanged` completes then); the exit code says how it ended. A lost
 * connection is reopened as `reconnect` says and the subscription sent again:
 * rolloutChanged starts with the rollout as it is then, so an end while the
 * watch was away is read, not missed.
 */
async function watch({ api }: CliContext, first: RolloutFieldsFragment, view: LiveView<RolloutFieldsFragment>, reconnect: ReconnectPolicy): Promise<ExitCode> {
  let last = first;
  // Already over (ended before we came): the subscription would only repeat it.
  if (!settled(first)) {
    const sub = api.subscribe(
      RolloutChangedDocument,
      { id: first.id },
      ({ rolloutChanged }) => {
        last = rolloutChanged;
        view.update(last);
      },
      reconnect,
    );
    await sub.done;
  } else {
    view.update(first);
  }
  const { code, line } = outcome(last);
  if (code === ExitCode.ERROR) process.stderr.write(`${line}\n`);
  else view.finish(line);
  return code;
}

export function registerRolloutCommands(program: Command): void {
  const rollout = commandGroup(
    program,
    "rollout",
    "staged upgrades of many devices: create, preview, list, show, pause, resume, cancel, retry, watch",
    "iothub-ota rollout list --product demo",
  ).addHelpText("after", EXIT_CODES_HELP);

  const create = clientCommand(
    rollout,
    "create",
    "create a rollout and start it (or schedule it with --start-at); prints it, or only its id with --quiet",
    `id=$(iothub-ota rollout create --product demo --tag beta --firmware-id "$fw" \\
    --wave 5% --wave 50%:soak=10m --wave 100% --abort-rule DOWNLOAD_FAILED:10:20 --timeout 30m --quiet)
iothub-ota rollout watch "$id"; echo "exit $?"
# fw: the id of an uploaded artifact (fw=$(iothub-ota firmware upload --product demo --version 2.0 demo-2.0.bin --quiet));
# or a file hosted elsewhere instead of --firmware-id:
iothub-ota rollout create --product demo --tag beta --version 2.0 --url https://fw.example/demo-2.0.bin \\
    --size 524288 --md5 <32 hex> --sha256 <64 hex> --wave 100%
iothub-ota rollout create --input rollout.json --name "from a file, flags override"`,
    async (ctx, _args, o) => {
      const view = rolloutView(ctx.json);
      // Refused before anything is created.
      const reconnect = reconnectPolicy(o, (line) => view.note(line));
      const input = await inputOf(o);
      const { createRollout: r } = await ctx.api.request(CreateRolloutDocument, { input });
      if (o.quiet) print(r.id);
      else if (ctx.json && !o.watch) json(r);
      else if (!ctx.json) print(rolloutBlock(r));
      if (o.watch) return watch(ctx, r, view, reconnect);
    },
  );
  withReconnect(
    rolloutOptions(create)
      .option("-q, --quiet", "print only the rollout's id")
      .option("--watch", "then watch it as rollout watch does (and exit as it does)"),
  ).addHelpText("after", EXIT_CODES_HELP);

  rolloutOptions(
    clientCommand(
      rollout,
      "preview",
      "what rollout create would do with the same flags: targets, skipped and why, waves, time; sends nothing",
      "iothub-ota rollout preview --product demo --tag beta --firmware-id \"$fw\" --wave 10% --wave 100% --allow-from 1.x\n" +
        "iothub-ota rollout preview --product demo --tag beta --version 2.0 --url https://fw.example/demo-2.0.bin \\\n    --size 524288 --md5 <32 hex> --sha256 <64 hex> --wave 10% --wave 100%",
      async ({ api, json: asJson }, _args, o) => {
        const { previewRollout: p } = await api.request(PreviewRolloutDocument, { input: await inputOf(o) });
        if (asJson) return json(p);
        print(previewBlock(p));
      },
    ),
  );

  clientCommand(
    rollout,
    "list",
    "list a product's rollouts, newest first, with their progress",
    "iothub-ota rollout list --product demo --state RUNNING,PAUSED",
    async ({ api, json: asJson }, _args, o) => {
      const f = parseFlags(
        z.object({ product: flag.required, state: upperList(ROLLOUT_STATES).optional(), first: flag.int(1, 100).optional(), after: z.string().optional() }),
        o,
      );
      const { rollouts } = await api.request(RolloutsDocument, { productName: f.product, states: f.state ?? null, first: f.first ?? null, after: f.after ?? null });
      if (asJson) return json(rollouts);
      print(rolloutTable(rollouts.nodes));
      if (rollouts.pageInfo.hasNextPage) process.stderr.write(`more: --after ${rollouts.pageInfo.endCursor}\n`);
    },
  )
    .option("--product <name>", "the product")
    .option("--state <states>", "only rollouts in these states, comma-separated")
    .option("--first <n>", "page size, 1..100 (default 50)")
    .option("--after <cursor>", "the page after this cursor");

  clientCommand(
    rollout,
    "show <id>",
    "show a rollout: state, counts, failures, why it aborted; with --executions, its devices",
    "iothub-ota rollout show 42 --executions FAILED,TIMED_OUT",
    async ({ api, json: asJson }, [id], o) => {
      const f = parseFlags(z.object({ executions: z.union([z.literal(true), upperList(EXECUTION_STATES)]).optional() }), o);
      const r = await rolloutOf(api, id as string);
      const states = f.executions === true ? null : f.executions;
      const executions =
        states === undefined
          ? undefined
          : (await pagesOf(async (after) => (await api.request(RolloutExecutionsDocument, { id: r.id, states, first: 1000, after })).rolloutExecutions, { all: true })).nodes;
      if (asJson) return json(executions ? { ...r, executions } : r);
      print(rolloutBlock(r));
      if (executions) {
        print(`\n${table(["DEVICE", "WAVE", "STATE", "FAILURE", "SKIPPED", "FROM", "ATTEMPTS", "LAST EVENT"], executions.map((e) => [e.deviceName, waveNumber(e.wave), e.state, e.failureClass, e.skipReason, e.fromVersion, e.attempts.length, e.lastEventAt]))}`);
      }
    },
  ).option("--executions [states]", "also list its executions (only these states, comma-separated)");

  const actions: [string, string, (api: ApiClient, id: string) => Promise<RolloutFieldsFragment>][] = [
    ["pause", "stop notifying devices; those already notified finish and are recorded", async (api, id) => (await api.request(PauseRolloutDocument, { id })).pauseRollout],
    ["resume", "resume a paused rollout", async (api, id) => (await api.request(ResumeRolloutDocument, { id })).resumeRollout],
    ["cancel", "end a rollout: queued executions are canceled", async (api, id) => (await api.request(CancelRolloutDocument, { id })).cancelRollout],
  ];
  for (const [verb, description, act] of actions) {
    clientCommand(rollout, `${verb} <id>`, description, `iothub-ota rollout ${verb} 42`, async ({ api, json: asJson }, [id]) => {
      const r = await act(api, id as string);
      if (asJson) return json(r);
      print(rolloutBlock(r));
    });
  }

  clientCommand(
    rollout,
    "retry <id>",
    "queue failed executions again (of these classes, or all); an ended rollout runs again",
    "iothub-ota rollout retry 42 --classes DOWNLOAD_FAILED,TIMED_OUT && iothub-ota rollout watch 42",
    async ({ api, json: asJson }, [id], o) => {
      const { classes } = parseFlags(
        z.object({ classes: upperList(FAILURE_CLASSES).optional() }),
        o,
      );
      const { retryRollout: r } = await api.request(RetryRolloutDocument, { id: id as string, failureClasses: classes ?? null });
      if (asJson) return json(r);
      print(rolloutBlock(r));
    },
  ).option("--classes <a,b>", "only failures of these classes");

  const watchCommand = clientCommand(
    rollout,
    "watch <id>",
    "follow a rollout live until it ends (progress bar and counts on a terminal, a line per change otherwise, JSON lines with --json); the exit code says how it ended",
    'iothub-ota rollout watch 42 || echo "rollout 42 did not complete cleanly: exit $?"',
    async (ctx, [id], o) => {
      const view = rolloutView(ctx.json);
      return watch(ctx, await rolloutOf(ctx.api, id as string), view, reconnectPolicy(o, (line) => view.note(line)));
    },
  );
  withReconnect(watchCommand).addHelpText("after", EXIT_CODES_HELP);
}
