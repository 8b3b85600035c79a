// Summarises a V8 .cpuprofile: self time by function and by package, heaviest first.
//   npx tsx bench/profile-top.ts /tmp/prof/CPU.*.cpuprofile
import { readFileSync } from "node:fs";

interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
const profile = JSON.parse(readFileSync(process.argv[2] as string, "utf8")) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map<number, number>();
profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
const total = [...self.values()].reduce((a, b) => a + b, 0);
const fns = new Map<string, number>();
const pkgs = new Map<string, number>();
for (const [id, us] of self) {
  const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
  const where = url.replace(/^.*node_modules\//, "").replace(/^file:\/\/\/work\/main\//, "");
  const pkg = url.includes("node_modules/") ? (where.startsWith("@") ? where.split("/").slice(0, 2).join("/") : where.split("/")[0]) : url.startsWith("node:") ? "(node)" : url.includes("/src/") ? "(ours)" : url ? url : `(native) ${functionName}`;
  fns.set(`${functionName || "(anon)"} ${where}:${lineNumber}`, (fns.get(`${functionName || "(anon)"} ${where}:${lineNumber}`) ?? 0) + us);
  pkgs.set(pkg as string, (pkgs.get(pkg as string) ?? 0) + us);
}
const top = (m: Map<string, number>, n: number) =>
  [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => `${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`).join("\n");
console.log(`total ${(total / 1e6).toFixed(2)} s\n\nby package\n${top(pkgs, 15)}\n\nby function\n${top(fns, 30)}`);

// Inclusive time: a function's own samples and those of everything it called.
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const inclusive = new Map<string, number>();
for (const [id, us] of self) {
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const { functionName, url, lineNumber } = byId.get(cur)!.callFrame;
    const key = `${functionName || "(anon)"} ${url.replace(/^.*node_modules\//, "").replace(/^file:\/\/\/work\/main\//, "")}:${lineNumber}`;
    if (seen.has(key)) continue;
    seen.add(key);
    inclusive.set(key, (inclusive.get(key) ?? 0) + us);
  }
}
console.log(`\nby function, inclusive\n${top(inclusive, 40)}`);
