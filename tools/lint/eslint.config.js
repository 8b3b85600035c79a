// `npm run lint` (scripts/lint.sh) runs this with `-c tools/lint/eslint.config.js` from the
// repository root, so every pattern below is relative to the root. Rules are chosen for the bugs
// they catch (a promise nobody waits for, a switch that forgets a state), not for style.
import path from "node:path";
import reactHooks from "eslint-plugin-react-hooks";
import tseslint from "typescript-eslint";

const root = path.resolve(import.meta.dirname, "../..");

export default tseslint.config(
  {
    ignores: [
      "**/node_modules/**",
      "dist/**",
      "web/dist/**",
      "data/**",
      "drizzle/**",
      "test-output/**",
      "tools/**",
      "bin/**",
      // codegen output (committed, checked stale by a test): not written by hand
      "src/client/generated/**",
    ],
  },
  {
    files: [
      "src/**/*.ts",
      "test/**/*.ts",
      "bench/**/*.ts",
      "scripts/*.ts",
      "*.config.ts",
      "web/src/**/*.{ts,tsx}",
      "web/*.config.ts",
    ],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: {
        // each file is checked against its nearest tsconfig.json: the root's, or web/tsconfig.json
        projectService: true,
        tsconfigRootDir: root,
      },
    },
    plugins: { "@typescript-eslint": tseslint.plugin },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      // promises: a rejection nobody handles crashes Node 20 (unhandledRejection)
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/await-thenable": "error",
      // `return promise` inside try: its rejection skips the catch and the finally runs too early
      "@typescript-eslint/return-await": ["error", "in-try-catch"],
      // house style 4: a discriminated union's switch names every case; a default branch does
      // not stand in for a forgotten one (a never-check in it stays allowed)
      "@typescript-eslint/switch-exhaustiveness-check": [
        "error",
        {
          considerDefaultExhaustiveForUnions: false,
          allowDefaultCaseForExhaustiveSwitch: true,
          requireDefaultForNonUnion: false,
        },
      ],
      // tsconfig has no noFallthroughCasesInSwitch: a case that runs into the next one says so in a comment
      "no-fallthrough": "error",
    },
  },
  {
    files: ["web/src/**/*.{ts,tsx}"],
    plugins: { "react-hooks": reactHooks },
    rules: {
      // a hook called conditionally, or an effect reading a value it does not list, shows stale data
      "react-hooks/rules-of-hooks": "error",
      "react-hooks/exhaustive-deps": "error",
      // React ignores what an event handler returns, and the dashboard's handlers await urql, whose
      // promises resolve with the error (result.error) rather than reject
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: { attributes: false } }],
    },
  },
);
