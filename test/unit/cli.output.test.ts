import { describe, expect, it } from "vitest";
import { progressText } from "../../src/cli/cli.output.js";

describe("a device's OTA progress in the command line's output", () => {
  it("reads as a percentage while it goes on, and as the failure's class, not its code, once it failed", () => {
    expect(progressText({ state: "DOWNLOADING", progress: 40, version: "2.0", failureReason: null })).toBe("DOWNLOADING 40% 2.0");
    expect(progressText({ state: "SUCCEEDED", progress: 100, version: "2.0" })).toBe("SUCCEEDED 100% 2.0");
    expect(progressText({ state: "FAILED", progress: -2, version: "2.0", failureReason: "MD5_MISMATCH" })).toBe("FAILED MD5_MISMATCH 2.0");
    expect(progressText({ state: "FAILED", progress: -9, version: "2.0" })).toBe("FAILED code -9 2.0");
  });
});
