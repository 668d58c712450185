// `tuna train`: config → run directory → shards → plan.json → engine → adapter + summary.
//
// runs/<id>/
//   config.json        the resolved config (defaults filled in)
//   data/              shards + manifest.json + data-report.json
//   plan.json          what the engine was asked to do
//   events.jsonl       every engine event, appended as it arrives
//   checkpoints/       step-N/ (engine)
//   adapter/           PEFT layout (engine)
//   summary.json       the outcome, also when the engine failed
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { resolvePath } from "../../config/load.ts";
import type { RunConfig } from "../../config/schema.ts";
import { type EngineEvent, TrainPlan } from "../../engine/protocol.ts";
import { startEngine } from "../../engine/runner.ts";
import { TunaError } from "../../errors.ts";
import { buildTrainPlan } from "./plan.ts";
import { prepareShards } from "./prepare.ts";
import { formatDuration, ProgressPrinter } from "./progress.ts";

export interface TrainSummary {
  run_dir: string;
  status: "done" | "failed" | "interrupted";
  steps: number;
  total_steps: number;
  first_loss: number | null;
  final_loss: number | null;
  val_loss: number | null;
  elapsed_s: number;
  adapter_dir: string | null;
  error?: { code: string; message: string; hint?: string };
}

export function newRunId(configPath: string): string {
  const stem = basename(configPath)
    .replace(/\.(ya?ml|json)$/i, "")
    .replace(/[^A-Za-z0-9_.-]/g, "-");
  const ts = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `${stem}-${ts}`;
}

/** Model directory problems, all at once, naming each missing file and where we looked. */
export function checkModelDir(dir: string): void {
  if (!existsSync(dir)) {
    throw new TunaError("MODEL_NOT_FOUND", `model directory ${dir} does not exist`, {
      hint: "create one with `tuna model init <dir> --preset tiny`, or point `model:` at a Hugging Face model directory",
    });
  }
  const missing: string[] = [];
  if (!existsSync(join(dir, "config.json"))) missing.push("config.json");
  if (!existsSync(join(dir, "tokenizer.json"))) missing.push("tokenizer.json");
  if (missing.length) {
    throw new TunaError(
      "MODEL_INCOMPLETE",
      `model directory ${dir} lacks ${missing.join(" and ")} (looked in ${resolve(dir)})`,
      {
        hint: "a model directory needs config.json, safetensors weights, tokenizer.json and a chat template",
      },
    );
  }
}

export interface TrainOptions {
  config: RunConfig;
  configPath: string;
  strict?: boolean;
  /** Print progress (CLI); tests pass false. */
  quiet?: boolean;
}

export async function train(opts: TrainOptions): Promise<TrainSummary> {
  const { config } = opts;
  const modelDir = resolvePath(config.model);
  checkModelDir(modelDir);
  const runDir = resolvePath(join(config.output_dir, newRunId(opts.configPath)));
  mkdirSync(runDir, { recursive: true });
  writeFileSync(join(runDir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  const printer = new ProgressPrinter();
  const say = (s: string) => !opts.quiet && printer.say(s);
  say(`run ${runDir}`);

  const manifest = await prepareShards({
    config,
    modelDir,
    dataDir: join(runDir, "data"),
    strict: opts.strict,
    say,
  });
  const plan = buildTrainPlan({ config, modelDir, runDir, manifest });
  writeFileSync(join(runDir, "plan.json"), `${JSON.stringify(plan, null, 2)}\n`);
  return runEngine(runDir, plan, { quiet: opts.quiet, printer });
}

/** `tuna train --resume runs/<id>`: same plan and shards, continuing from the latest checkpoint. */
export async function resume(runDir: string, opts: { quiet?: boolean } = {}): Promise<TrainSummary> {
  const planPath = join(runDir, "plan.json");
  if (!existsSync(planPath)) {
    throw new TunaError("RUN_NOT_FOUND", `${planPath} does not exist`, {
      hint: "pass the run directory that `tuna train` printed",
    });
  }
  const plan = TrainPlan.parse(JSON.parse(readFileSync(planPath, "utf8")));
  plan.resume_from = resolve(runDir);
  writeFileSync(planPath, `${JSON.stringify(plan, null, 2)}\n`);
  return runEngine(resolve(runDir), plan, { quiet: opts.quiet, printer: new ProgressPrinter() });
}

async function runEngine(
  runDir: string,
  plan: TrainPlan,
  o: { quiet?: boolean; printer: ProgressPrinter },
): Promise<TrainSummary> {
  const started = Date.now();
  let first = null as number | null;
  let last = null as number | null;
  let step = 0;
  let val = null as number | null;
  const say = (s: string) => !o.quiet && o.printer.say(s);
  const engine = startEngine({
    command: "train",
    planPath: join(runDir, "plan.json"),
    eventsPath: join(runDir, "events.jsonl"),
    forwardSignals: true,
    onStderr: process.env.TUNA_ENGINE_LOG ? (c) => process.stderr.write(c) : undefined,
    onEvent: (e: EngineEvent) => {
      switch (e.event) {
        case "start":
          say(
            `engine: ${e.device}, ${e.dtype}, ${(e.params_trainable / 1e6).toFixed(2)}M of ${(e.params_total / 1e6).toFixed(1)}M parameters trained, ${e.total_steps} steps${e.start_step ? ` (resuming at step ${e.start_step})` : ""}`,
          );
          break;
        case "step":
          first ??= e.loss;
          last = e.loss;
          step = e.step;
          if (!o.quiet) o.printer.step(e);
          break;
        case "eval":
          val = e.val_loss;
          say(`step ${e.step}: validation loss ${e.val_loss.toFixed(4)}`);
          break;
        case "checkpoint":
          say(`step ${e.step}: checkpoint ${e.path}`);
          break;
        case "error":
          say(
            `engine error [${e.code}]${e.step !== undefined ? ` at step ${e.step}` : ""}: ${e.message}${e.hint ? `\nhint: ${e.hint}` : ""}`,
          );
          break;
        case "log":
          break;
        case "done":
          step = e.steps;
          break;
      }
    },
  });
  const r = await engine.done;
  if (!o.quiet) o.printer.end();
  const ok = r.code === 0 && !r.error;
  const summary: TrainSummary = {
    run_dir: runDir,
    status: ok ? "done" : r.error?.code === "INTERRUPTED" || r.signal === "SIGINT" ? "interrupted" : "failed",
    steps: step,
    total_steps: plan.train.max_steps,
    first_loss: first,
    final_loss: last,
    val_loss: val,
    elapsed_s: (Date.now() - started) / 1000,
    adapter_dir: ok ? plan.output.adapter_dir : null,
  };
  if (!ok) {
    summary.error = r.error
      ? { code: r.error.code, message: r.error.message, hint: r.error.hint }
      : {
          code: "ENGINE_CRASHED",
          message: `the engine exited with ${r.code ?? r.signal} without an error event; its last output:\n${r.stderrTail.trim().split("\n").slice(-15).join("\n")}`,
        };
  }
  writeFileSync(join(runDir, "summary.json"), `${JSON.stringify(summary, null, 2)}\n`);
  if (ok) {
    say(
      `done: ${summary.steps} steps in ${formatDuration(summary.elapsed_s)}, loss ${first?.toFixed(4)} → ${last?.toFixed(4)}${val !== null ? `, validation ${val.toFixed(4)}` : ""}\nadapter: ${summary.adapter_dir}`,
    );
  }
  return summary;
}
