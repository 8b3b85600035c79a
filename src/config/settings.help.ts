import { readFileSync } from "node:fs";

const README = new URL("../../README.md", import.meta.url);

/**
 * `serve --help`'s list of settings: the README's "Settings" table, as
 * plain aligned text, so the two never disagree (one source).
 */
export function settingsHelp(): string {
  let readme = "";
  try {
    readme = readFileSync(README, "utf8");
  } catch {
    // an install without the README: the fallback line below
  }
  const section = /^## Settings\n([\s\S]*?)^## /m.exec(readme)?.[1] ?? "";
  const rows = section
    .split("\n")
    .filter((line) => line.startsWith("| `"))
    // Cells may be empty (`| |`); code spans and emphasis are Markdown, not the terminal's.
    .map((line) => line.slice(1, -1).split("|").map((cell) => cell.trim().replace(/`|\*\*/g, "")));
  if (rows.length === 0) return "\nSettings: see README.md, \"Settings\".\n";
  const width = Math.min(30, Math.max(...rows.map(([name]) => (name ?? "").length)));
  const lines = rows.map(([name = "", fallback = "", meaning = ""]) => {
    const head = `  ${name.padEnd(width)}  `;
    return `${head}${fallback === "" ? "" : `(default ${fallback}) `}${meaning}`;
  });
  return `\nSettings (environment variables, checked at start; README.md, "Settings"):\n${lines.join("\n")}\n`;
}
