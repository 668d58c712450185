import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { z } from "zod";
import { parseConfig, readYaml } from "../src/config/load.ts";
import {
  DistributedConfig,
  MethodConfig,
  PackConfig,
  RunConfig,
  TemplateConfig,
  TrainConfig,
} from "../src/config/schema.ts";
import { isTunaError } from "../src/errors.ts";
import { oneSplitManifest } from "./helpers/manifest.ts";

function write(text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), "tuna-config-")), "run.yaml");
  writeFileSync(p, text);
  return p;
}

describe("run config", () => {
  it("fills defaults", () => {
    const p = write("model: m\ndata: { sources: [ { path: a.jsonl } ] }\n");
    const c = parseConfig(RunConfig, readYaml(p), p);
    expect(c.method).toMatchObject({ type: "lora", r: 16, alpha: 32, target_modules: "all-linear" });
    expect(c.train).toMatchObject({ epochs: 1, learning_rate: 2e-4, scheduler: "cosine" });
    // Left unset so it cannot contradict recompute; the plan makes both absent "full" (config-recompute.test.ts).
    expect(c.train.gradient_checkpointing).toBeUndefined();
    expect(c.pack.max_length).toBe(2048);
    expect(c.template).toEqual({ thinking: "auto", loss_on: "all" });
  });

  it("lists every problem with its line, field, the value given and what is allowed", () => {
    const p = write(
      [
        "model: m",
        "data: { sources: [ { path: a.jsonl } ] }",
        "method:",
        "  r: 0",
        "  target_modules: [q_proj, qq_proj]",
        "train: { learning_rate: 3, schedular: cosine }",
      ].join("\n"),
    );
    try {
      parseConfig(RunConfig, readYaml(p), p);
      expect.unreachable();
    } catch (e) {
      expect(isTunaError(e) && e.code).toBe("CONFIG_INVALID");
      const msg = (e as Error).message;
      expect(msg).toContain(p);
      expect(msg).toMatch(/line 4: method\.r: .*\(given: 0\)/);
      expect(msg).toMatch(/line 5: method\.target_modules.*\(given: /);
      expect(msg).toMatch(/line 6: train\.learning_rate: .*\(given: 3\)/);
      expect(msg).toMatch(/train: Unrecognized key.*schedular/);
    }
  });

  it("points at the line of a YAML syntax error", () => {
    const p = write("model: m\ndata: [\n  : bad\n");
    expect(() => readYaml(p)).toThrow(new RegExp(`${p}:\\d`));
  });

  it("documents every field in docs/config.md", () => {
    const doc = readFileSync(join(import.meta.dirname, "../docs/config.md"), "utf8");
    const sections: [string, z.ZodObject][] = [
      ["Top level", RunConfig as unknown as z.ZodObject],
      ["`template`", TemplateConfig as unknown as z.ZodObject],
      ["`pack`", PackConfig as unknown as z.ZodObject],
      ["`method`", MethodConfig as unknown as z.ZodObject],
      ["`train`", TrainConfig as unknown as z.ZodObject],
      ["`distributed`", DistributedConfig as unknown as z.ZodObject],
    ];
    for (const [heading, schema] of sections) {
      const start = doc.indexOf(`## ${heading}`);
      expect(start, heading).toBeGreaterThan(-1);
      const end = doc.indexOf("\n## ", start + 3);
      const section = doc.slice(start, end === -1 ? undefined : end);
      for (const key of Object.keys(schema.shape))
        expect(section, `${heading} ${key}`).toContain(`| \`${key}\` |`);
    }
  });
});

describe("config → plan.json", () => {
  it("passes method and train settings through to the engine's plan, computing steps and warm-up", async () => {
    const { buildTrainPlan } = await import("../src/jobs/train/plan.ts");
    const p = write(
      [
        "model: m",
        "data: { sources: [ { path: a.jsonl } ] }",
        "method: { type: qlora, keep_16bit: [o_proj], trainable_layers: [0, 2] }",
        "train: { epochs: 2, micro_batch_size: 2, grad_accum: 3, compile: true, early_stopping_patience: 2, eval_every: 5, warmup_ratio: 0.1 }",
        "device: cpu",
      ].join("\n"),
    );
    const config = parseConfig(RunConfig, readYaml(p), p);
    const manifest = oneSplitManifest(40, 31);
    const plan = buildTrainPlan({ config, modelDir: "/m", runDir: "/r", manifest });
    // ceil(2 epochs × 31 packs / (2 × 3)) = 11 steps; warm-up round(0.1 × 11) = 1
    expect(plan.train).toMatchObject({
      max_steps: 11,
      warmup_steps: 1,
      compile: true,
      early_stopping_patience: 2,
      eval_every: 5,
    });
    expect(plan.method).toMatchObject({ type: "qlora", keep_16bit: ["o_proj"], trainable_layers: [0, 2] });
    expect(plan.method.lora).toMatchObject({ r: 16, alpha: 32, target_modules: ["all-linear"] });
    expect(plan.model).toEqual({ path: "/m", dtype: "float32" });
    expect(plan.data.train).toEqual(["/r/data/train-00000.safetensors"]);
  });
});
