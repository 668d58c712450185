// `npm run demo` must keep working: the same command, cut to two steps.
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { REPO_ROOT } from "../src/engine/runner.ts";

it("tuna demo: builds the tiny model, trains, prints the losses and one generated answer", () => {
  const out = mkdtempSync(join(tmpdir(), "tuna-demo-"));
  const r = spawnSync(
    process.execPath,
    [join(REPO_ROOT, "bin/tuna.mjs"), "demo", "--out", out, "--max-steps", "2"],
    {
      cwd: REPO_ROOT,
      encoding: "utf8",
      timeout: 600_000,
    },
  );
  expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
  expect(r.stdout).toMatch(/RANDOM-INITIALISED/);
  expect(r.stdout).toMatch(/\[1\/3\] model: .*demo-model — tiny Qwen3 architecture/);
  expect(r.stdout).toMatch(
    /loss before: \d+\.\d{4} \(first step\)\s+after: \d+\.\d{4} \(last step\)\s+validation: \d+\.\d{4}/,
  );
  expect(r.stdout).toMatch(/ {2}assistant: ".*"\n {2}\(\d+ tokens, stopped by /);
  expect(r.stdout).toContain("npx tuna train examples/payment-support/qwen3-8b.yaml");
});
