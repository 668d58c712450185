// The sweep config (`tuna sweep <config.yaml>`): a base run config, a grid (or list) of overrides, an optional
// eval config, and the metric that picks the best trial. docs/eval-config.md ("Sweeps") documents it.
import { z } from "zod";
import { formatIssues, parseConfig, readYaml, resolvePath } from "../../config/load.ts";
import { RunConfig } from "../../config/schema.ts";
import { TunaError } from "../../errors.ts";
import { EvalConfig, withDocsHint } from "../eval/config.ts";

/** An override key: a dotted path into the run config (train.learning_rate, method.r, train.epochs, …) or data.mix. */
const ParamKey = z.string().regex(/^[a-z_]+(\.[a-z_0-9]+)*$/, "a dotted path such as train.learning_rate");
const Params = z.record(ParamKey, z.unknown());
export type Params = Record<string, unknown>;

export const SweepConfig = z
  .object({
    /** A run config file (`tuna train` YAML) the trials start from. */
    base: z.string().min(1).optional(),
    /** Run config fields, inline (over `base` when both are given). */
    run: z.record(z.string(), z.unknown()).optional(),
    /** Every combination of these values (keys in order; the last one varies fastest). */
    grid: z.record(ParamKey, z.array(z.unknown()).min(1)).optional(),
    /** Or an explicit list of trials. */
    trials: z.array(Params).min(1).optional(),
    /** Eval config (file or inline) run on each trial's adapter; its model and adapters are set by the sweep. */
    eval: z.union([z.string().min(1), z.record(z.string(), z.unknown())]).optional(),
    select: z
      .object({
        /** val_loss, final_loss, or an eval metric of the trial's row (answers.token_f1, tools.accuracy…);
         * prefix rag: for its +rag row. */
        metric: z.string().min(1).default("val_loss"),
        /** Default: min for losses, max for everything else. */
        mode: z.enum(["min", "max"]).optional(),
        /** Trials whose eval flags forgetting cannot be the best. */
        exclude_forgetting: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    /** Where the sweep keeps its state, trials and table (default: <run output_dir>/sweep-<config name>). */
    output_dir: z.string().min(1).optional(),
  })
  .strict()
  .refine((c) => c.base !== undefined || c.run !== undefined, {
    message: "give base (a run config file) or run",
  })
  .refine((c) => (c.grid === undefined) !== (c.trials === undefined), {
    message: "give either grid or trials",
  });
export type SweepConfig = z.infer<typeof SweepConfig>;

export function loadSweepConfig(file: string): SweepConfig {
  return withDocsHint(() => parseConfig(SweepConfig, readYaml(file), file), 'docs/eval-config.md ("Sweeps")');
}

/** The trials' overrides: the grid's cartesian product, or the list. */
export function expandTrials(c: SweepConfig): Params[] {
  if (c.trials) return c.trials;
  let out: Params[] = [{}];
  for (const [key, values] of Object.entries(c.grid ?? {})) {
    out = out.flatMap((p) => values.map((v) => ({ ...p, [key]: v })));
  }
  return out;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b))
    out[k] = isObject(v) && isObject(out[k]) ? deepMerge(out[k] as Record<string, unknown>, v) : v;
  return out;
}

/** The raw (unvalidated) base run config: the file, with `run` merged over it. */
export function baseRunConfig(c: SweepConfig): Record<string, unknown> {
  let base: Record<string, unknown> = {};
  if (c.base) {
    // Paths are relative to the current directory, like every other command-line path.
    const loaded = readYaml(resolvePath(c.base));
    if (!isObject(loaded.value))
      throw new TunaError("CONFIG_INVALID", "the base run config is not a mapping", { where: c.base });
    base = loaded.value;
  }
  return c.run ? deepMerge(base, c.run) : base;
}

/** One trial's run config: the base with the overrides applied, validated. */
export function trialRunConfig(base: Record<string, unknown>, params: Params, where: string): RunConfig {
  const raw = structuredClone(base) as Record<string, unknown>;
  for (const [key, value] of Object.entries(params)) {
    if (key === "data.mix") {
      // {source name or path: ratio}: the share of each source in the training mix.
      const sources = (raw.data as { sources?: Record<string, unknown>[] } | undefined)?.sources ?? [];
      if (!isObject(value)) {
        throw new TunaError(
          "SWEEP_BAD_PARAM",
          `data.mix must map source names to ratios, got ${JSON.stringify(value)}`,
          { where },
        );
      }
      for (const [name, ratio] of Object.entries(value)) {
        const s = sources.find((x) => x.name === name || x.path === name);
        if (!s) {
          const known = sources.map((x) => String(x.name ?? x.path)).join(", ");
          throw new TunaError(
            "SWEEP_BAD_PARAM",
            `data.mix names source "${name}", which the run config does not have (it has ${known})`,
            {
              where,
              hint: "name a source by its `name` or its `path`",
            },
          );
        }
        s.ratio = ratio;
        delete s.weight;
      }
      continue;
    }
    const path = key.split(".");
    let cur: Record<string, unknown> = raw;
    for (const p of path.slice(0, -1)) {
      if (!isObject(cur[p])) cur[p] = {};
      cur = cur[p] as Record<string, unknown>;
    }
    cur[path[path.length - 1]] = value;
    // An explicit epoch count means "train for epochs": a step limit of the base would silently win.
    if (key === "train.epochs" && isObject(raw.train) && !("train.max_steps" in params))
      delete raw.train.max_steps;
  }
  const r = RunConfig.safeParse(raw);
  if (!r.success) {
    throw new TunaError(
      "SWEEP_BAD_PARAM",
      `the trial's run config is invalid:\n  ${formatIssues(r.error.issues, raw).join("\n  ")}`,
      {
        where,
        hint: "see docs/config.md for the run config's fields",
      },
    );
  }
  return r.data;
}

/** A trial's eval config: the sweep's eval config with model and adapters set to the trial's. */
export function trialEvalConfig(
  evalSpec: SweepConfig["eval"],
  model: string,
  adapterName: string,
  runDir: string,
): EvalConfig | undefined {
  if (evalSpec === undefined) return undefined;
  let raw: Record<string, unknown>;
  let where = "eval";
  if (typeof evalSpec === "string") {
    const loaded = readYaml(evalSpec);
    if (!isObject(loaded.value))
      throw new TunaError("CONFIG_INVALID", "the eval config is not a mapping", { where: evalSpec });
    raw = loaded.value;
    where = evalSpec;
  } else raw = evalSpec;
  const r = EvalConfig.safeParse({ ...raw, model, adapters: { [adapterName]: runDir } });
  if (!r.success) {
    throw new TunaError(
      "CONFIG_INVALID",
      `invalid eval config:\n  ${formatIssues(r.error.issues, raw).join("\n  ")}`,
      {
        where,
        hint: "see docs/eval-config.md",
      },
    );
  }
  return r.data;
}
