import type { TestApp } from "./app.js";

/** The value of one sample in the app's /metrics, 0 when absent. */
export async function metric(t: Pick<TestApp, "httpUrl">, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = line.slice(name.length).split(" ")[0] ?? "";
    if (wanted.every((w) => labelText.includes(w))) return Number(line.split(" ").at(-1));
  }
  return 0;
}
