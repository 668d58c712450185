// train.base_precision (FP8 frozen base GEMMs): config schema → plan.json → the engine's plan parser.
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

function write(text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), "tuna-fp8-")), "run.yaml");
  writeFileSync(p, text);
  return p;
}

function config(method: string, train: string) {
  const p = write(
    ["model: m", "data: { sources: [ { path: a.jsonl } ] }", method, train, "device: cpu"].join("\n"),
  );
  return { p, config: () => parseConfig(RunConfig, readYaml(p), p) };
}

function plan(c: RunConfig) {
  const manifest = oneSplitManifest(8, 8);
  return buildTrainPlan({ config: c, modelDir: "/m", runDir: "/r", manifest });
}

describe("train.base_precision", () => {
  it("defaults to bf16 and reaches plan.json", () => {
    const { config: c } = config("method: { type: lora }", "train: {}");
    expect(c().train.base_precision).toBe("bf16");
    expect(plan(c()).train.base_precision).toBe("bf16");
  });

  it("fp8 with method lora goes through plan.json, and the engine's parser reads the same value", () => {
    const { config: c } = config("method: { type: lora }", "train: { base_precision: fp8, recompute: none }");
    const p = plan(c());
    expect(p.train).toMatchObject({ base_precision: "fp8", recompute: "none" });
    const dir = mkdtempSync(join(tmpdir(), "tuna-fp8-plan-"));
    const file = join(dir, "plan.json");
    writeFileSync(file, JSON.stringify(p));
    const prog =
      "import json, sys\nfrom tuna_engine.protocol import parse_train_plan\n" +
      "t = parse_train_plan(json.load(open(sys.argv[1]))).train\nprint(t.base_precision, t.recompute)";
    const out = execFileSync(testPython(), ["-c", prog, file], {
      env: { ...process.env, PYTHONPATH: join(REPO_ROOT, "engine") },
      encoding: "utf8",
    });
    expect(out.trim()).toBe("fp8 none");
  });

  it.each([
    ["method: { type: qlora }", '"fp8" needs method.type "lora"', "(its base is already 4-bit)"],
    ["method: { type: full }", 'method.type is "full"', "(full fine-tuning trains the base)"],
  ])("fp8 with %s is an error naming the field and its line", (method, msg, why) => {
    const { p, config: c } = config(method, "train:\n  base_precision: fp8");
    try {
      c();
      expect.unreachable();
    } catch (e) {
      expect(isTunaError(e) && e.code).toBe("CONFIG_INVALID");
      const text = (e as Error).message;
      expect(text).toContain(p);
      expect(text).toMatch(/line 5: train\.base_precision: /);
      expect(text).toContain(msg);
      expect(text).toContain(why);
    }
  });

  it("refuses an unknown precision, naming the allowed values", () => {
    const { config: c } = config("method: { type: lora }", "train: { base_precision: fp16 }");
    expect(c).toThrow(/train\.base_precision: .*"bf16".*"fp8".*\(given: "fp16"\)/);
  });
});
