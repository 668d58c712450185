// train.cuda_graphs (CUDA graphs for each micro-batch): config schema → plan.json → the engine's plan parser.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig, readYaml } from "../src/config/load.ts";
import { RunConfig } from "../src/config/schema.ts";
import { REPO_ROOT } from "../src/engine/runner.ts";
import { isTunaError } from "../src/errors.ts";
import { buildTrainPlan } from "../src/jobs/train/plan.ts";
import { oneSplitManifest } from "./helpers/manifest.ts";
import { testPython } from "./helpers/python.ts";

function config(train: string) {
  const p = join(mkdtempSync(join(tmpdir(), "tuna-graphs-")), "run.yaml");
  writeFileSync(p, ["model: m", "data: { sources: [ { path: a.jsonl } ] }", train, "device: cpu"].join("\n"));
  return { p, config: () => parseConfig(RunConfig, readYaml(p), p) };
}

function plan(c: RunConfig) {
  return buildTrainPlan({ config: c, modelDir: "/m", runDir: "/r", manifest: oneSplitManifest(8, 8) });
}

/** What the engine's parser reads from a plan.json. */
function engineReads(p: unknown): string {
  const file = join(mkdtempSync(join(tmpdir(), "tuna-graphs-plan-")), "plan.json");
  writeFileSync(file, JSON.stringify(p));
  const prog =
    "import json, sys\nfrom tuna_engine.protocol import parse_train_plan\n" +
    "print(parse_train_plan(json.load(open(sys.argv[1]))).train.cuda_graphs)";
  return execFileSync(testPython(), ["-c", prog, file], {
    env: { ...process.env, PYTHONPATH: join(REPO_ROOT, "engine") },
    encoding: "utf8",
  }).trim();
}

describe("train.cuda_graphs", () => {
  it('defaults to "auto" and reaches the engine', () => {
    const { config: c } = config("train: {}");
    expect(c().train.cuda_graphs).toBe("auto");
    const p = plan(c());
    expect(p.train.cuda_graphs).toBe("auto");
    expect(engineReads(p)).toBe("auto");
  });

  it("false reaches the engine as False", () => {
    const { config: c } = config("train: { cuda_graphs: false }");
    expect(engineReads(plan(c()))).toBe("False");
  });

  it("refuses another value, naming the field and its line", () => {
    const { p, config: c } = config("train:\n  cuda_graphs: sometimes");
    try {
      c();
      expect.unreachable();
    } catch (e) {
      expect(isTunaError(e) && e.code).toBe("CONFIG_INVALID");
      const text = (e as Error).message;
      expect(text).toContain(p);
      expect(text).toMatch(/line 4: train\.cuda_graphs: /);
    }
  });
});
