// train.recompute (what the backward recomputes) and its older switch gradient_checkpointing: config schema →
// plan.json → the engine's plan parser, which checks that the two agree.
import { describe, expect, it } from "vitest";
import { configError, engineReads, runConfig, trainPlan } from "./helpers/train-config.ts";

describe("train.recompute", () => {
  it("follows gradient_checkpointing when absent", () => {
    for (const [line, want] of [
      ["train: {}", "full True"],
      ["train: { gradient_checkpointing: false }", "none False"],
    ]) {
      const p = trainPlan(runConfig(line).load());
      expect(engineReads(p, "t.recompute, t.gradient_checkpointing")).toBe(want);
    }
  });

  it('"elementwise" reaches the engine as a run without layer recomputation', () => {
    // gradient_checkpointing left out: recompute decides, and the plan says false (no layer is recomputed).
    const { load } = runConfig("train: { recompute: elementwise }");
    expect(load().train.gradient_checkpointing).toBeUndefined();
    const p = trainPlan(load());
    expect(p.train).toMatchObject({ recompute: "elementwise", gradient_checkpointing: false });
    expect(engineReads(p, "t.recompute, t.gradient_checkpointing")).toBe("elementwise False");
    const off = trainPlan(
      runConfig("train: { gradient_checkpointing: false, recompute: elementwise }").load(),
    );
    expect(engineReads(off, "t.recompute")).toBe("elementwise");
  });

  it("mlp and full keep gradient_checkpointing on in the plan", () => {
    for (const mode of ["full", "mlp"]) {
      const p = trainPlan(runConfig(`train: { recompute: ${mode} }`).load());
      expect(engineReads(p, "t.recompute, t.gradient_checkpointing")).toBe(`${mode} True`);
    }
  });

  it("refuses gradient_checkpointing that contradicts recompute, and an unknown mode", () => {
    const { path, load } = runConfig("train:\n  gradient_checkpointing: false\n  recompute: mlp");
    const text = configError(load);
    expect(text).toContain(path);
    expect(text).toContain('recompute "mlp" contradicts gradient_checkpointing: false');
    expect(text).toContain('"none" or "elementwise"');
    expect(configError(runConfig("train:\n  recompute: pointwise").load)).toMatch(
      /line 4: train\.recompute: /,
    );
    for (const mode of ["none", "elementwise"]) {
      const bad = configError(runConfig(`train: { gradient_checkpointing: true, recompute: ${mode} }`).load);
      expect(bad).toContain(`recompute "${mode}" contradicts gradient_checkpointing: true`);
    }
  });
});
