// Issue "Tuna v0" end to end: `tuna train` on the tiny model for a few steps on CPU — the loss falls, the run
// directory holds everything DESIGN.md names, and the adapter loads with peft over transformers' Qwen3 giving
// the same logits as Tuna's engine; `tuna merge` writes a model transformers loads with those logits.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../src/engine/runner.ts";
import { testPython } from "./helpers/python.ts";

const tuna = (args: string[], cwd = REPO_ROOT) =>
  spawnSync(process.execPath, [join(REPO_ROOT, "bin/tuna.mjs"), ...args], {
    cwd,
    encoding: "utf8",
    timeout: 600_000,
  });

let work: string;
let modelDir: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "tuna-e2e-"));
  modelDir = join(work, "model");
  const r = tuna(["model", "init", modelDir, "--preset", "tiny", "--seed", "1"]);
  expect(r.status, r.stderr).toBe(0);
});

function writeConfig(name: string, extra: string): string {
  const path = join(work, name);
  writeFileSync(
    path,
    `model: ${modelDir}
output_dir: ${join(work, "runs")}
data:
  sources:
    - { path: ${join(REPO_ROOT, "examples/payment-support/knowledge.jsonl")}, limit: 6 }
    - { path: ${join(REPO_ROOT, "examples/payment-support/tools.jsonl")}, limit: 2 }
  clean: { dedup: { near: false } }
pack: { max_length: 1024 }
method: { type: lora, r: 8, alpha: 16, target_modules: all-linear }
train: { max_steps: 8, micro_batch_size: 1, learning_rate: 1.0e-2, warmup_steps: 0, scheduler: constant, seed: 3, gradient_checkpointing: false }
device: cpu
${extra}`,
  );
  return path;
}

describe("tuna train (tiny model, CPU)", () => {
  it("trains, the loss falls, and peft loads the adapter with the engine's logits", () => {
    const config = writeConfig("e2e.yaml", "");
    const r = tuna(["train", config]);
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    const runs = readdirSync(join(work, "runs"));
    expect(runs).toHaveLength(1);
    const run = join(work, "runs", runs[0]);
    for (const f of [
      "config.json",
      "plan.json",
      "events.jsonl",
      "summary.json",
      "data/manifest.json",
      "data/data-report.json",
      "adapter/adapter_config.json",
      "adapter/adapter_model.safetensors",
    ]) {
      expect(existsSync(join(run, f)), f).toBe(true);
    }
    const events = readFileSync(join(run, "events.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const losses = events.filter((e) => e.event === "step").map((e) => e.loss as number);
    expect(losses).toHaveLength(8);
    // Six different packs, so part of the fall is noise between packs; a learning model still falls clearly.
    expect(losses[7]).toBeLessThan(losses[0] - 0.5);
    expect(events.at(-1).event).toBe("done");
    const summary = JSON.parse(readFileSync(join(run, "summary.json"), "utf8"));
    expect(summary).toMatchObject({ status: "done", steps: 8, total_steps: 8 });
    // The progress line went to stderr with step/total, loss, lr, tokens/s, ETA.
    expect(r.stderr).toMatch(/step 8\/8 │ loss \d+\.\d+ │ lr [\d.e+-]+ │ [\d,]+ tok\/s │ ETA/);

    const manifest = JSON.parse(readFileSync(join(run, "data/manifest.json"), "utf8"));
    expect(manifest.splits.train.samples).toBeGreaterThanOrEqual(6);
    expect(manifest.tokenizer_hash).toMatch(/^[0-9a-f]{64}$/);

    const merged = tuna(["merge", run, "--out", join(work, "merged")]);
    expect(merged.status, merged.stderr).toBe(0);
    const out = execFileSync(
      testPython(),
      [
        join(REPO_ROOT, "test/fixtures/e2e/compare_adapter.py"),
        modelDir,
        join(run, "adapter"),
        join(work, "merged"),
      ],
      {
        encoding: "utf8",
        env: { ...process.env, PYTHONPATH: join(REPO_ROOT, "engine") },
      },
    );
    const cmp = JSON.parse(out.trim().split("\n").at(-1)!);
    expect(cmp.adapter_effect).toBeGreaterThan(1e-3); // the adapter changes the model...
    expect(cmp.rel_diff).toBeLessThan(1e-5); // ...identically in peft and in Tuna's engine
    expect(cmp.merged_rel_diff).toBeLessThan(1e-5); // and `tuna merge` folds it in exactly
  });

  it("names the missing file of a broken model directory", () => {
    const empty = join(work, "empty-model");
    execFileSync("mkdir", ["-p", empty]);
    const config = writeConfig("bad-model.yaml", "");
    const text = readFileSync(config, "utf8").replace(`model: ${modelDir}`, `model: ${empty}`);
    writeFileSync(config, text);
    const r = tuna(["train", config]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`model directory ${empty} lacks config.json and tokenizer.json`);
  });

  it("reports every config error at once with the line, field, value and what is allowed", () => {
    const config = writeConfig("bad.yaml", "dtype: float64\n");
    writeFileSync(config, readFileSync(config, "utf8").replace("r: 8", "r: -2"));
    const r = tuna(["train", config]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/line \d+: method\.r: .*\(given: -2\)/);
    expect(r.stderr).toMatch(/dtype: .*"float32".*\(given: "float64"\)/);
  });

  it("Ctrl-C stops the engine with its error shown, exits non-zero, and the run directory keeps what it wrote", async () => {
    const config = writeConfig("interrupt.yaml", "");
    writeFileSync(
      config,
      readFileSync(config, "utf8")
        .replace("max_steps: 8,", "max_steps: 500, save_every: 1,")
        .replace(`${join(work, "runs")}`, `${join(work, "runs-int")}`),
    );
    const child = spawn(process.execPath, [join(REPO_ROOT, "bin/tuna.mjs"), "train", config], {
      cwd: REPO_ROOT,
    });
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    // Interrupt once the first checkpoint is announced.
    await new Promise<void>((resolveWait, reject) => {
      const timer = setInterval(() => {
        if (/checkpoint/.test(stderr)) {
          clearInterval(timer);
          child.kill("SIGINT");
          resolveWait();
        }
      }, 100);
      child.on("exit", () => {
        clearInterval(timer);
        reject(new Error(`tuna exited before a checkpoint:\n${stderr}`));
      });
    });
    const code = await new Promise<number | null>((r) => child.on("close", (c) => r(c)));
    expect(code).toBe(130);
    expect(stderr).toMatch(/engine error \[INTERRUPTED\]/);
    expect(stderr).toMatch(/the run directory keeps everything written so far/);
    const run = join(work, "runs-int", readdirSync(join(work, "runs-int"))[0]);
    const summary = JSON.parse(readFileSync(join(run, "summary.json"), "utf8"));
    expect(summary.status).toBe("interrupted");
    expect(readdirSync(join(run, "checkpoints")).some((d) => /^step-\d+$/.test(d))).toBe(true);
    const events = readFileSync(join(run, "events.jsonl"), "utf8");
    expect(events).toContain('"code":"INTERRUPTED"');
  });
});
