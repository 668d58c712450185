// train.cuda_graphs (CUDA graphs for each micro-batch): config schema → plan.json → the engine's plan parser.
import { describe, expect, it } from "vitest";
import { configError, engineReads, runConfig, trainPlan } from "./helpers/train-config.ts";

describe("train.cuda_graphs", () => {
  it('defaults to "auto" and reaches the engine', () => {
    const { load } = runConfig("train: {}");
    expect(load().train.cuda_graphs).toBe("auto");
    const p = trainPlan(load());
    expect(p.train.cuda_graphs).toBe("auto");
    expect(engineReads(p, "t.cuda_graphs")).toBe("auto");
  });

  it("false reaches the engine as False", () => {
    const { load } = runConfig("train: { cuda_graphs: false }");
    expect(engineReads(trainPlan(load()), "t.cuda_graphs")).toBe("False");
  });

  it("refuses another value, naming the field and its line", () => {
    const { path, load } = runConfig("train:\n  cuda_graphs: sometimes");
    const text = configError(load);
    expect(text).toContain(path);
    expect(text).toMatch(/line 4: train\.cuda_graphs: /);
  });
});
