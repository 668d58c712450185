// A train config on disk → its parsed RunConfig → plan.json → what the engine's plan parser reads: the path a
// `train:` setting travels, for tests of one setting end to end (config-fp8, config-graphs).
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import { parseConfig, readYaml } from "../../src/config/load.ts";
import { RunConfig } from "../../src/config/schema.ts";
import { REPO_ROOT } from "../../src/engine/runner.ts";
import { isTunaError } from "../../src/errors.ts";
import { buildTrainPlan } from "../../src/jobs/train/plan.ts";
import { oneSplitManifest } from "./manifest.ts";
import { testPython } from "./python.ts";

/** run.yaml with `lines` between the model/data lines (lines 1–2) and `device: cpu`; `load` parses it. */
export function runConfig(...lines: string[]) {
  const path = join(mkdtempSync(join(tmpdir(), "tuna-config-")), "run.yaml");
  writeFileSync(
    path,
    ["model: m", "data: { sources: [ { path: a.jsonl } ] }", ...lines, "device: cpu"].join("\n"),
  );
  return { path, load: () => parseConfig(RunConfig, readYaml(path), path) };
}

export function trainPlan(c: RunConfig) {
  return buildTrainPlan({ config: c, modelDir: "/m", runDir: "/r", manifest: oneSplitManifest(8, 8) });
}

/** What the engine's parser makes of plan.json: `expr` printed in Python, `t` the parsed plan's train section. */
export function engineReads(plan: unknown, expr: string): string {
  const file = join(mkdtempSync(join(tmpdir(), "tuna-plan-")), "plan.json");
  writeFileSync(file, JSON.stringify(plan));
  const prog =
    "import json, sys\nfrom tuna_engine.protocol import parse_train_plan\n" +
    `t = parse_train_plan(json.load(open(sys.argv[1]))).train\nprint(${expr})`;
  return execFileSync(testPython(), ["-c", prog, file], {
    env: { ...process.env, PYTHONPATH: join(REPO_ROOT, "engine") },
    encoding: "utf8",
  }).trim();
}

/** The CONFIG_INVALID message `load` throws (the test fails if it throws nothing or another error). */
export function configError(load: () => unknown): string {
  try {
    load();
  } catch (e) {
    expect(isTunaError(e) && e.code).toBe("CONFIG_INVALID");
    return (e as Error).message;
  }
  return expect.unreachable("the config was accepted");
}
