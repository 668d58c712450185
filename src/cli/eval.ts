// `tuna eval` — evaluations. `tuna eval <config.yaml>` runs base and tuned models on held-out sets and writes a
// report (src/jobs/eval/); `tuna eval tools` scores function calls by BFCL's AST rules (src/eval/bfcl.ts).
import { basename, dirname, join } from "node:path";
import type { Command } from "commander";
import { resolvePath } from "../config/load.ts";
import { TunaError } from "../errors.ts";
import { scoreToolFiles } from "../eval/tool-eval.ts";
import { loadEvalConfig } from "../jobs/eval/config.ts";
import { resolveAdapters, runEval } from "../jobs/eval/run.ts";

/** runs/<id>/eval when the (first) adapter is a run's, else runs/eval-<config>-<time>. */
export function defaultEvalDir(configPath: string, adapters: Record<string, string>): string {
  const first = Object.values(adapters)[0];
  if (first !== undefined && basename(first) === "adapter") return join(dirname(first), "eval");
  const stem = basename(configPath)
    .replace(/\.(ya?ml|json)$/i, "")
    .replace(/[^A-Za-z0-9_.-]/g, "-");
  const ts = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return resolvePath(join("runs", `eval-${stem}-${ts}`));
}

export function register(program: Command): void {
  const evalCmd = program
    .command("eval")
    .description(
      "Evaluate models: `tuna eval <config.yaml>` compares the base model and tuned adapters on answers, tools,\n" +
        "forgetting (gsm8k), thinking and retrieval (docs/eval-config.md); `tuna eval tools` scores predictions.",
    )
    .argument("[config]", "eval config (YAML), see docs/eval-config.md")
    .option("--out <dir>", "output folder (default: runs/<id>/eval of the first adapter's run)")
    .option("--quiet", "no progress output")
    .action(async (configPath: string | undefined, o: { out?: string; quiet?: boolean }) => {
      if (configPath === undefined) {
        evalCmd.help();
        return;
      }
      const config = loadEvalConfig(configPath);
      const adapters = resolveAdapters(config.adapters);
      const outDir = o.out ? resolvePath(o.out) : defaultEvalDir(configPath, adapters);
      const summary = await runEval(config, { outDir, adapters, quiet: o.quiet });
      const keys = [...new Set(summary.models.flatMap((m) => Object.keys(m.metrics)))];
      const w = Math.max(...summary.models.map((m) => m.name.length), 5);
      process.stdout.write(`${"model".padEnd(w)}  ${keys.join("  ")}\n`);
      for (const m of summary.models) {
        const cells = keys.map((k) => (k in m.metrics ? m.metrics[k].toFixed(3) : "–").padStart(k.length));
        process.stdout.write(`${m.name.padEnd(w)}  ${cells.join("  ")}\n`);
      }
      for (const f of summary.forgetting) process.stdout.write(`${f.model}: ${f.message}\n`);
      process.stdout.write(`report: ${join(summary.out_dir, "report.md")} (.json, .html)\n`);
      if (summary.forgetting.some((f) => f.flagged)) process.exitCode = 1;
    });

  evalCmd
    .command("tools")
    .description(
      "Score tool calls against BFCL-format ground truth; prints JSON {accuracy, total, correct, errors, by_category}.\n" +
        'A prediction line is {"id", "tool_calls": [{"name", "arguments"}]} (empty list = no call) or\n' +
        '{"id", "text"} with raw Qwen3 output. Cases without an answer line expect no call (irrelevance).',
    )
    .requiredOption(
      "--cases <jsonl>",
      "BFCL cases: {id, question, function: [{name, description, parameters}]}",
    )
    .option("--answers <jsonl>", "ground truth: {id, ground_truth: [{fn: {arg: [allowed values]}}]}")
    .requiredOption("--predictions <jsonl>", "model predictions, one per case")
    .option("--details", "add per_case results")
    .option("--exact-names", "do not accept `a_b` for a function named `a.b`")
    .option(
      "--order <mode>",
      "match several calls 'auto' (unordered for parallel categories), 'any' or 'ordered'",
      "auto",
    )
    .action(
      (opts: {
        cases: string;
        answers?: string;
        predictions: string;
        details?: boolean;
        exactNames?: boolean;
        order: string;
      }) => {
        if (!["auto", "any", "ordered"].includes(opts.order)) {
          throw new TunaError(
            "EVAL_BAD_OPTION",
            `--order ${JSON.stringify(opts.order)} is not one of auto, any, ordered`,
            {
              hint: "leave it out for BFCL's behaviour",
            },
          );
        }
        const result = scoreToolFiles(
          { cases: opts.cases, answers: opts.answers, predictions: opts.predictions },
          {
            details: opts.details ?? false,
            dottedNames: opts.exactNames ? "exact" : "either",
            unordered: opts.order === "auto" ? undefined : opts.order === "any",
          },
        );
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      },
    );
}
