// `tuna sweep`: trial expansion and overrides (learning rate, rank, epochs, data mix), best-trial selection,
// and the whole path on CPU with the tiny model: 2 trials of 1 step each, trained and evaluated, interrupted
// by SIGINT after the first trial finished, then continued by running the same command again.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../src/engine/runner.ts";
import type { TunaError } from "../src/errors.ts";
import { expandTrials, SweepConfig, trialRunConfig } from "../src/jobs/sweep/config.ts";
import { paramsKey, pickBest, type TrialRecord } from "../src/jobs/sweep/run.ts";

const TUNA = join(REPO_ROOT, "bin/tuna.mjs");
let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "tuna-sweep-test-"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const baseRun = {
  model: "m",
  data: {
    sources: [
      { path: "examples/payment-support/knowledge.jsonl", name: "knowledge" },
      { path: "examples/payment-support/tools.jsonl", weight: 2 },
    ],
  },
  train: { max_steps: 5, learning_rate: 2e-4 },
};

describe("sweep config", () => {
  it("expands a grid in order, the last key fastest", () => {
    const c = SweepConfig.parse({
      run: baseRun,
      grid: { "train.learning_rate": [1e-4, 2e-4], "method.r": [8, 16, 32] },
    });
    const t = expandTrials(c);
    expect(t).toHaveLength(6);
    expect(t[0]).toEqual({ "train.learning_rate": 1e-4, "method.r": 8 });
    expect(t[1]).toEqual({ "train.learning_rate": 1e-4, "method.r": 16 });
    expect(t[5]).toEqual({ "train.learning_rate": 2e-4, "method.r": 32 });
    expect(() => SweepConfig.parse({ run: baseRun, grid: {}, trials: [{}] })).toThrow(
      /either grid or trials/,
    );
    expect(() => SweepConfig.parse({ grid: { "method.r": [1] } })).toThrow(/base/);
  });

  it("applies overrides, data mix by source name or path, and epochs over a base step limit", () => {
    const rc = trialRunConfig(
      baseRun,
      {
        "train.learning_rate": 1e-3,
        "method.r": 4,
        "train.epochs": 2,
        "data.mix": { knowledge: 1, "examples/payment-support/tools.jsonl": 3 },
      },
      "t0",
    );
    expect(rc.train.learning_rate).toBe(1e-3);
    expect(rc.method.r).toBe(4);
    expect(rc.train.epochs).toBe(2);
    expect(rc.train.max_steps).toBeUndefined();
    expect(rc.data.sources.map((s) => [s.ratio, s.weight])).toEqual([
      [1, undefined],
      [3, undefined],
    ]);
    expect(baseRun.train.max_steps).toBe(5); // the base is not changed
    const bad = (p: Record<string, unknown>) => {
      try {
        trialRunConfig(baseRun, p, "sweep.yaml trial 3");
      } catch (e) {
        return e as TunaError;
      }
      throw new Error("expected an error");
    };
    const e1 = bad({ "method.r": -1 });
    expect(e1.code).toBe("SWEEP_BAD_PARAM");
    expect(e1.message).toMatch(/sweep\.yaml trial 3: .*method\.r: .*\(given: -1\)/s);
    expect(bad({ "data.mix": { style: 1 } }).message).toContain(
      'source "style", which the run config does not have (it has knowledge, examples/payment-support/tools.jsonl)',
    );
    expect(bad({ "train.learnin_rate": 1 }).message).toContain("learnin_rate");
  });

  it("picks the best finished trial by the metric's direction, skipping flagged forgetting", () => {
    const t = (index: number, value: number | null, extra: Partial<TrialRecord> = {}): TrialRecord => ({
      index,
      params: { i: index },
      status: "done",
      run_dir: null,
      adapter_dir: null,
      steps: 1,
      final_loss: null,
      val_loss: null,
      eval_dir: null,
      metrics: {},
      forgetting_flagged: false,
      value,
      elapsed_s: 0,
      ...extra,
    });
    const trials = [
      t(0, 0.5),
      t(1, 0.2),
      t(2, 0.9, { forgetting_flagged: true }),
      t(3, null),
      t(4, 0.1, { status: "failed" }),
    ];
    expect(pickBest(trials, "min", true)?.index).toBe(1);
    expect(pickBest(trials, "max", true)?.index).toBe(0);
    expect(pickBest(trials, "max", false)?.index).toBe(2);
    expect(paramsKey({ b: 1, a: { d: 2, c: 3 } })).toBe(paramsKey({ a: { c: 3, d: 2 }, b: 1 }));
  });
});

describe("tuna sweep on the tiny model", () => {
  it("trains and evaluates each trial, continues after an interruption, and keeps the best", async () => {
    const model = join(tmp, "tiny");
    execFileSync("node", [TUNA, "model", "init", model, "--preset", "tiny"], {
      cwd: REPO_ROOT,
      stdio: "ignore",
    });
    const base = join(tmp, "base.yaml");
    writeFileSync(
      base,
      `model: ${model}
data:
  sources:
    - { path: examples/payment-support/knowledge.jsonl, name: knowledge, limit: 12 }
    - { path: examples/payment-support/tools.jsonl, name: tools, limit: 6 }
  split: { count: 2 }
  clean: { dedup: { near: false } }
template: { thinking: false }
pack: { max_length: 256, over_length: truncate }
method: { type: lora, r: 4, alpha: 8 }
train: { max_steps: 1, micro_batch_size: 2, warmup_steps: 0, gradient_checkpointing: false }
device: cpu
dtype: float32
`,
    );
    const sweepDir = join(tmp, "sweep");
    const config = join(tmp, "sweep.yaml");
    writeFileSync(
      config,
      `base: ${base}
trials:
  - { train.learning_rate: 1.0e-3, method.r: 2 }
  - { train.learning_rate: 1.0e-2, data.mix: { knowledge: 1, tools: 3 } }
eval:
  sets: { answers: { path: examples/payment-support/eval/questions.jsonl, limit: 1 } }
  generation: { max_new_tokens: 2 }
  device: cpu
select: { metric: val_loss }
output_dir: ${sweepDir}
`,
    );
    const statePath = join(sweepDir, "sweep-state.json");
    const finishedTrials = () =>
      existsSync(statePath) ? (JSON.parse(readFileSync(statePath, "utf8")).trials as TrialRecord[]) : [];

    // First call: interrupt once trial 0 is recorded.
    const first = spawn("node", [TUNA, "sweep", config, "--quiet"], { cwd: REPO_ROOT });
    let firstOut = "";
    first.stdout.on("data", (c) => {
      firstOut += c;
    });
    const exited = new Promise<number | null>((r) => first.on("close", (code) => r(code)));
    for (let i = 0; i < 1200 && finishedTrials().length === 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(finishedTrials()).toHaveLength(1);
    first.kill("SIGINT");
    const code = await exited;
    expect(code).toBe(130);
    const afterFirst = finishedTrials();
    expect(afterFirst).toHaveLength(1);
    expect(afterFirst[0]).toMatchObject({ index: 0, status: "done", steps: 1 });
    if (firstOut) expect(firstOut).toContain("1 trial(s) left");

    // Second call: trial 0 is not trained again; trial 1 runs.
    const second = spawnSync("node", [TUNA, "sweep", config, "--quiet"], {
      cwd: REPO_ROOT,
      encoding: "utf8",
      timeout: 300_000,
    });
    expect(second.status, second.stderr).toBe(0);
    const result = JSON.parse(readFileSync(join(sweepDir, "sweep.json"), "utf8"));
    expect(result.trials).toHaveLength(2);
    const [t0, t1] = result.trials as TrialRecord[];
    expect(t0).toEqual(afterFirst[0]);
    expect(t1).toMatchObject({ index: 1, status: "done", steps: 1 });
    expect(readdirSync(join(sweepDir, "trials")).filter((d) => d.startsWith("trial-0-"))).toHaveLength(1);
    for (const t of [t0, t1]) {
      expect(existsSync(join(t.adapter_dir!, "adapter_config.json"))).toBe(true);
      expect(t.value).toBe(t.val_loss);
      expect(typeof t.metrics["answers.token_f1"]).toBe("number");
      // Each trial's eval ran on its own adapter, with the base model beside it.
      const s = JSON.parse(readFileSync(join(t.eval_dir!, "summary.json"), "utf8"));
      expect(s.models.map((m: { name: string }) => m.name)).toEqual(["base", `trial-${t.index}`]);
      expect(s.models[1].adapter_dir).toBe(t.adapter_dir);
    }
    // The trials really differ as configured.
    const cfg0 = JSON.parse(readFileSync(join(t0.run_dir!, "config.json"), "utf8"));
    const cfg1 = JSON.parse(readFileSync(join(t1.run_dir!, "config.json"), "utf8"));
    expect([cfg0.train.learning_rate, cfg0.method.r]).toEqual([1e-3, 2]);
    expect([cfg1.train.learning_rate, cfg1.method.r]).toEqual([1e-2, 4]);
    expect(cfg1.data.sources.map((s: { ratio: number }) => s.ratio)).toEqual([1, 3]);
    const best = (t0.val_loss as number) <= (t1.val_loss as number) ? t0 : t1;
    expect(result.best.index).toBe(best.index);
    const md = readFileSync(join(sweepDir, "sweep.md"), "utf8");
    expect(md).toContain(`| ${best.index} ★ |`);
    expect(md).toContain("| trial | train.learning_rate | method.r | data.mix | status |");
    expect(second.stdout).toContain(`best: trial ${best.index}`);
    expect(second.stdout).not.toContain("left");
  });
});
