// `tuna sweep <config.yaml>`: train each trial of a grid (or list), evaluate it, keep the best by the chosen
// metric, and write a comparison table. A sweep that stops (Ctrl-C, crash) continues where it stopped: the
// state file lists the finished trials, written atomically after each one, and those are not run again.
//
// <sweep dir>/
//   sweep-state.json   finished trials (the resume point) and the hash of the base config they ran with
//   trials/<trial-N-time>/  each trial's run directory (`tuna train` layout, eval/ inside)
//   sweep.json         every trial's parameters, losses, eval metrics, and the best one
//   sweep.md           the same as a table
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { z } from "zod";
import { TunaError } from "../../errors.ts";
import { runEval } from "../eval/run.ts";
import { train } from "../train/run.ts";
import { baseRunConfig, expandTrials, type SweepConfig, trialEvalConfig, trialRunConfig } from "./config.ts";

export const TrialRecord = z.object({
  index: z.number().int(),
  params: z.record(z.string(), z.unknown()),
  status: z.enum(["done", "failed"]),
  run_dir: z.string().nullable(),
  adapter_dir: z.string().nullable(),
  steps: z.number(),
  final_loss: z.number().nullable(),
  val_loss: z.number().nullable(),
  eval_dir: z.string().nullable(),
  /** The trial's eval row metrics (and its +rag row's, prefixed rag:). */
  metrics: z.record(z.string(), z.number()),
  forgetting_flagged: z.boolean(),
  /** The selection metric's value (null when the trial lacks it). */
  value: z.number().nullable(),
  elapsed_s: z.number(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type TrialRecord = z.infer<typeof TrialRecord>;

const SweepState = z.object({
  version: z.literal(1),
  base_hash: z.string(),
  trials: z.array(TrialRecord),
});
type SweepState = z.infer<typeof SweepState>;

export interface SweepResult {
  sweep_dir: string;
  metric: string;
  mode: "min" | "max";
  best: TrialRecord | null;
  trials: TrialRecord[];
  /** Trials still to run (after an interruption or --max-trials). */
  remaining: number;
  /** Stopped by Ctrl-C during a trial's training. */
  interrupted: boolean;
}

/** Parameters as a stable key (sorted object keys), so a trial is recognised whatever the key order. */
export function paramsKey(p: unknown): string {
  const sort = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sort)
      : v !== null && typeof v === "object"
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, sort((v as Record<string, unknown>)[k])]),
          )
        : v;
  return JSON.stringify(sort(p));
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

export function selectMode(metric: string, mode?: "min" | "max"): "min" | "max" {
  return mode ?? (/loss/.test(metric) ? "min" : "max");
}

/** The best finished trial (ties: the earlier trial). */
export function pickBest(
  trials: readonly TrialRecord[],
  mode: "min" | "max",
  excludeForgetting: boolean,
): TrialRecord | null {
  let best: TrialRecord | null = null;
  for (const t of [...trials].sort((a, b) => a.index - b.index)) {
    if (t.status !== "done" || t.value === null || (excludeForgetting && t.forgetting_flagged)) continue;
    if (
      best === null ||
      (mode === "min" ? t.value < (best.value as number) : t.value > (best.value as number))
    )
      best = t;
  }
  return best;
}

const fmtValue = (v: unknown) =>
  typeof v === "number"
    ? Number.isInteger(v)
      ? String(v)
      : Math.abs(v) < 1e-2
        ? v.toExponential(2)
        : v.toFixed(4)
    : JSON.stringify(v);

export function sweepTable(
  r: Omit<SweepResult, "remaining" | "interrupted">,
  paramKeys: readonly string[],
): string {
  const metricKeys = [...new Set(r.trials.flatMap((t) => Object.keys(t.metrics)))];
  const head = [
    "trial",
    ...paramKeys,
    "status",
    "steps",
    "final_loss",
    "val_loss",
    ...metricKeys,
    `${r.metric} (${r.mode})`,
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  for (const t of [...r.trials].sort((a, b) => a.index - b.index)) {
    const mark = r.best?.index === t.index ? " ★" : "";
    lines.push(
      `| ${[
        `${t.index}${mark}`,
        ...paramKeys.map((k) => (k in t.params ? fmtValue(t.params[k]) : "–")),
        t.status + (t.forgetting_flagged ? " (forgetting)" : ""),
        String(t.steps),
        t.final_loss === null ? "–" : fmtValue(t.final_loss),
        t.val_loss === null ? "–" : fmtValue(t.val_loss),
        ...metricKeys.map((k) => (k in t.metrics ? fmtValue(t.metrics[k]) : "–")),
        t.value === null ? "–" : fmtValue(t.value),
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

export interface RunSweepOptions {
  configPath: string;
  /** Default: <run output_dir>/sweep-<config name>. */
  outDir?: string;
  /** Forget the state file and run every trial again. */
  restart?: boolean;
  /** Run at most this many trials in this call (the rest on the next). */
  maxTrials?: number;
  quiet?: boolean;
}

export async function runSweep(config: SweepConfig, opts: RunSweepOptions): Promise<SweepResult> {
  const say = (s: string) => !opts.quiet && process.stderr.write(`${s}\n`);
  const base = baseRunConfig(config);
  const all = expandTrials(config);
  // Validate every trial before training any: a typo in the last one should not wait for the first to finish.
  const runConfigs = all.map((p, i) =>
    trialRunConfig(base, p, `${opts.configPath} trial ${i} ${JSON.stringify(p)}`),
  );
  const stem = opts.configPath.replace(/^.*[\\/]/, "").replace(/\.(ya?ml|json)$/i, "");
  const sweepDir = resolve(
    opts.outDir ?? config.output_dir ?? join(runConfigs[0].output_dir, `sweep-${stem}`),
  );
  mkdirSync(join(sweepDir, "trials"), { recursive: true });
  const statePath = join(sweepDir, "sweep-state.json");
  const baseHash = createHash("sha256")
    .update(paramsKey({ base, eval: config.eval ?? null }))
    .digest("hex")
    .slice(0, 16);
  let state: SweepState = { version: 1, base_hash: baseHash, trials: [] };
  if (existsSync(statePath) && !opts.restart) {
    const parsed = SweepState.safeParse(JSON.parse(readFileSync(statePath, "utf8")));
    if (!parsed.success) {
      throw new TunaError("SWEEP_STATE_INVALID", `${statePath} is not a sweep state file`, {
        hint: "pass --restart to start over",
      });
    }
    if (parsed.data.base_hash !== baseHash) {
      throw new TunaError(
        "SWEEP_STATE_MISMATCH",
        `${statePath} holds trials of a different base run or eval config (hash ${parsed.data.base_hash}, now ${baseHash})`,
        { hint: "pass --restart to run every trial again, or --out to sweep into another folder" },
      );
    }
    state = parsed.data;
  }
  const metric = config.select.metric;
  const mode = selectMode(metric, config.select.mode);
  const paramKeys = [...new Set(all.flatMap((p) => Object.keys(p)))];
  // Finished trials (done) are kept; failed ones run again.
  const finished = new Map(
    state.trials.filter((t) => t.status === "done").map((t) => [paramsKey(t.params), t]),
  );
  const records: TrialRecord[] = [];
  const save = () => {
    const trials = [
      ...records,
      ...[...finished.values()].filter(
        (t) => !records.some((r) => paramsKey(r.params) === paramsKey(t.params)),
      ),
    ];
    writeAtomic(
      statePath,
      `${JSON.stringify({ version: 1, base_hash: baseHash, trials } satisfies SweepState, null, 2)}\n`,
    );
    const best = pickBest(records, mode, config.select.exclude_forgetting);
    const result = { sweep_dir: sweepDir, metric, mode, best, trials: records };
    writeAtomic(join(sweepDir, "sweep.json"), `${JSON.stringify(result, null, 2)}\n`);
    writeAtomic(
      join(sweepDir, "sweep.md"),
      `# Sweep ${stem}\n\nBest by ${metric} (${mode}): ${best ? `trial ${best.index}` : "none yet"}.\n\n${sweepTable(result, paramKeys)}\n`,
    );
    return result;
  };

  // Ctrl-C: while the engine trains, train() forwards it and returns "interrupted"; at any other moment the
  // sweep stops at once (the state file only ever holds finished trials, so nothing is half-written).
  const onSigint = () => {
    if (process.listenerCount("SIGINT") > 1) return; // train's forwarder is active and will end the trial
    process.stderr.write("\nsweep: interrupted; run the same command again to continue\n");
    process.exit(130);
  };
  process.on("SIGINT", onSigint);
  let ran = 0;
  let interrupted = false;
  try {
    for (const [index, params] of all.entries()) {
      const done = finished.get(paramsKey(params));
      if (done) {
        records.push({ ...done, index });
        say(`trial ${index} ${JSON.stringify(params)}: done earlier (${done.run_dir})`);
        continue;
      }
      if (opts.maxTrials !== undefined && ran >= opts.maxTrials) continue;
      ran++;
      say(`trial ${index}/${all.length - 1} ${JSON.stringify(params)}`);
      const started = Date.now();
      const rc = { ...runConfigs[index], output_dir: join(sweepDir, "trials") };
      writeFileSync(
        join(sweepDir, `trial-${index}.json`),
        `${JSON.stringify({ params, config: rc }, null, 2)}\n`,
      );
      const summary = await train({ config: rc, configPath: `trial-${index}.yaml`, quiet: opts.quiet });
      if (summary.status === "interrupted") {
        interrupted = true;
        say(`sweep: interrupted in trial ${index}; run the same command again to continue`);
        break;
      }
      const rec: TrialRecord = {
        index,
        params,
        status: summary.status === "done" ? "done" : "failed",
        run_dir: summary.run_dir,
        adapter_dir: summary.adapter_dir,
        steps: summary.steps,
        final_loss: summary.final_loss,
        val_loss: summary.val_loss,
        eval_dir: null,
        metrics: {},
        forgetting_flagged: false,
        value: null,
        elapsed_s: 0,
      };
      if (summary.error) rec.error = { code: summary.error.code, message: summary.error.message };
      const evalConfig =
        rec.status === "done"
          ? trialEvalConfig(config.eval, rc.model, `trial-${index}`, summary.run_dir)
          : undefined;
      if (evalConfig) {
        const es = await runEval(evalConfig, { outDir: join(summary.run_dir, "eval"), quiet: opts.quiet });
        rec.eval_dir = es.out_dir;
        for (const m of es.models) {
          if (m.name === `trial-${index}`) Object.assign(rec.metrics, m.metrics);
          if (m.name === `trial-${index}+rag`)
            for (const [k, v] of Object.entries(m.metrics)) rec.metrics[`rag:${k}`] = v;
        }
        rec.forgetting_flagged = es.forgetting.some((f) => f.flagged);
      }
      const v =
        metric === "val_loss" ? rec.val_loss : metric === "final_loss" ? rec.final_loss : rec.metrics[metric];
      rec.value = v ?? null;
      if (rec.status === "done" && rec.value === null) {
        say(
          `trial ${index}: has no ${metric}${metric === "val_loss" ? " (the run config has no validation split)" : evalConfig ? "" : " (no eval config)"}`,
        );
      }
      rec.elapsed_s = (Date.now() - started) / 1000;
      records.push(rec);
      if (rec.status === "done") finished.set(paramsKey(params), rec);
      save();
      say(`trial ${index}: ${rec.status}${rec.value !== null ? `, ${metric} ${fmtValue(rec.value)}` : ""}`);
    }
  } finally {
    process.off("SIGINT", onSigint);
  }
  const result = save();
  const remaining = all.filter((p) => !finished.has(paramsKey(p))).length;
  return { ...result, remaining, interrupted };
}
