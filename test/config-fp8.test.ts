// train.base_precision (FP8 frozen base GEMMs): config schema → plan.json → the engine's plan parser.
import { describe, expect, it } from "vitest";
import { configError, engineReads, runConfig, trainPlan } from "./helpers/train-config.ts";

describe("train.base_precision", () => {
  it("defaults to bf16 and reaches plan.json", () => {
    const { load } = runConfig("method: { type: lora }", "train: {}");
    expect(load().train.base_precision).toBe("bf16");
    expect(trainPlan(load()).train.base_precision).toBe("bf16");
  });

  it("fp8 with method lora goes through plan.json, and the engine's parser reads the same value", () => {
    const { load } = runConfig("method: { type: lora }", "train: { base_precision: fp8, recompute: none }");
    const p = trainPlan(load());
    expect(p.train).toMatchObject({ base_precision: "fp8", recompute: "none" });
    expect(engineReads(p, "t.base_precision, t.recompute")).toBe("fp8 none");
  });

  it.each([
    ["method: { type: qlora }", '"fp8" needs method.type "lora"', "(its base is already 4-bit)"],
    ["method: { type: full }", 'method.type is "full"', "(full fine-tuning trains the base)"],
  ])("fp8 with %s is an error naming the field and its line", (method, msg, why) => {
    const { path, load } = runConfig(method, "train:\n  base_precision: fp8");
    const text = configError(load);
    expect(text).toContain(path);
    expect(text).toMatch(/line 5: train\.base_precision: /);
    expect(text).toContain(msg);
    expect(text).toContain(why);
  });

  it("refuses an unknown precision, naming the allowed values", () => {
    const { load } = runConfig("method: { type: lora }", "train: { base_precision: fp16 }");
    expect(load).toThrow(/train\.base_precision: .*"bf16".*"fp8".*\(given: "fp16"\)/);
  });
});
