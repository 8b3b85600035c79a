import type { TestApp } from "./app.js";

/** The sum of the samples of `name` in the app's /metrics that carry all of `labels`; 0 when none. */
export async function metric(t: Pick<TestApp, "httpUrl">, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = line.slice(name.length).split(" ")[0] ?? "";
    if (wanted.every((w) => labelText.includes(w))) sum += Number(line.split(" ").at(-1));
  }
  return sum;
}
