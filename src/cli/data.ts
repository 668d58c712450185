// `tuna data convert`, `tuna data validate`, and `tuna data preview` / `tuna data stats` (a run config's data as
// training will see it: src/jobs/data/).
import type { Command } from "commander";
import { parseConfig, readYaml, resolvePath } from "../config/load.ts";
import { RunConfig } from "../config/schema.ts";
import { convertBanking77 } from "../data/convert/banking77.ts";
import { convertBfcl } from "../data/convert/bfcl.ts";
import { newConvertReport, type OpenAIRecord, writeJsonl } from "../data/convert/common.ts";
import { convertSgd } from "../data/convert/sgd.ts";
import { type ColumnMap, FORMATS, type Format } from "../data/formats.ts";
import { validateFiles } from "../data/validate.ts";
import { TunaError } from "../errors.ts";
import { formatPreview, previewSamples } from "../jobs/data/preview.ts";
import { loadSampleContext, lossPolicy } from "../jobs/data/samples.ts";
import { dataStats, formatStats } from "../jobs/data/stats.ts";

const RECIPES: Record<
  string,
  (input: string, r: ReturnType<typeof newConvertReport>) => AsyncGenerator<OpenAIRecord>
> = {
  bfcl: convertBfcl,
  sgd: convertSgd,
  banking77: convertBanking77,
};

/** "user=problem,assistant=generated_solution" → ColumnMap. */
export function parseColumns(spec: string): ColumnMap {
  const map: Record<string, string> = {};
  for (const part of spec.split(",")) {
    const [k, v] = part.split("=").map((s) => s.trim());
    if (!k || !v || !["user", "assistant", "system", "reasoning", "tools"].includes(k)) {
      throw new TunaError("CLI_ARGS", `--columns: bad entry "${part}"`, {
        hint: "use role=column pairs, e.g. --columns user=problem,assistant=generated_solution",
      });
    }
    map[k] = v;
  }
  if (!map.user || !map.assistant)
    throw new TunaError("CLI_ARGS", "--columns needs at least user= and assistant=");
  return map as unknown as ColumnMap;
}

export function register(program: Command): void {
  const data = program.command("data").description("Read, check, convert and clean datasets.");

  data
    .command("convert")
    .description("Convert a public dataset into OpenAI-format tool-calling JSONL.")
    .requiredOption("--from <recipe>", `one of ${Object.keys(RECIPES).join(", ")}`)
    .requiredOption("--input <path>", "the dataset's folder or file")
    .requiredOption("--out <file.jsonl>", "where to write")
    .action(async (o: { from: string; input: string; out: string }) => {
      const recipe = RECIPES[o.from];
      if (!recipe) {
        throw new TunaError("CLI_ARGS", `--from: unknown recipe "${o.from}"`, {
          hint: `use ${Object.keys(RECIPES).join(", ")}`,
        });
      }
      const report = newConvertReport();
      await writeJsonl(o.out, recipe(o.input, report), report);
      process.stdout.write(`wrote ${report.written} conversations to ${o.out}\n`);
      for (const [reason, s] of Object.entries(report.skipped)) {
        process.stdout.write(`  ${reason}: ${s.count}\n`);
        for (const ex of s.examples) process.stdout.write(`    ${ex}\n`);
      }
    });

  data
    .command("validate")
    .description(
      "Read and check data files (files, directories, globs) and print what is valid and why the rest is not.",
    )
    .argument("<inputs...>", "files, directories or globs")
    .option("--strict", "stop at the first invalid record")
    .option("--format <format>", `force a format (${FORMATS.join(", ")}); default: detected per record`)
    .option("--columns <map>", "column mapping, e.g. user=problem,assistant=generated_solution")
    .option("--field <key>", "JSON files holding an object: the key of the records array")
    .option("--max-record-bytes <n>", "longest record read, in bytes", (v) => Number(v))
    .option("--json", "print the report as JSON")
    .action(
      async (
        inputs: string[],
        o: {
          strict?: boolean;
          format?: string;
          columns?: string;
          field?: string;
          maxRecordBytes?: number;
          json?: boolean;
        },
      ) => {
        if (o.format && !FORMATS.includes(o.format as Format)) {
          throw new TunaError("CLI_ARGS", `--format: unknown format "${o.format}"`, {
            hint: `use ${FORMATS.join(", ")}`,
          });
        }
        const report = await validateFiles(inputs, {
          strict: o.strict,
          format: o.format as Format | undefined,
          columns: o.columns ? parseColumns(o.columns) : undefined,
          field: o.field,
          maxRecordBytes: o.maxRecordBytes,
        });
        process.stdout.write(
          o.json ? `${JSON.stringify(report.toJSON(), null, 2)}\n` : `${report.format()}\n`,
        );
        if (report.valid === 0) process.exitCode = 1;
      },
    );

  data
    .command("preview")
    .description(
      "Show samples as training sees them: the model's own chat template, special tokens, trained tokens marked (colour on a terminal, ⟦…⟧ otherwise or with NO_COLOR).",
    )
    .argument("<config>", "run config (YAML)")
    .option("-n, --n <count>", "number of samples", "5")
    .option("--source <name>", "only this source (its name, or its path when it has none)")
    .option("--seed <seed>", "seed of the choice (default: data.seed)")
    .option("--json", "print the samples as JSON")
    .action(async (configPath: string, o: { n: string; source?: string; seed?: string; json?: boolean }) => {
      const n = Number(o.n);
      if (!Number.isInteger(n) || n < 1) {
        throw new TunaError("CLI_ARGS", `-n: "${o.n}" is not a positive whole number`, { hint: "e.g. -n 5" });
      }
      const { config, ctx } = await loadRun(configPath);
      const r = await previewSamples(config, ctx, { n, source: o.source, seed: o.seed });
      const color = !o.json && process.stdout.isTTY === true && !process.env.NO_COLOR;
      process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatPreview(r, color)}\n`);
    });

  data
    .command("stats")
    .description(
      "Count what a run config's data becomes: per source/format/role, thinking modes, trained-token share, length histogram, pack efficiency, skip and drop reasons.",
    )
    .argument("<config>", "run config (YAML)")
    .option(
      "--json",
      "print the statistics as JSON (histogram upper bound null = longer than pack.max_length)",
    )
    .action(async (configPath: string, o: { json?: boolean }) => {
      const { config, ctx } = await loadRun(configPath);
      const s = await dataStats(config, ctx);
      process.stdout.write(o.json ? `${JSON.stringify(s, null, 2)}\n` : `${formatStats(s)}\n`);
      if (s.samples === 0) process.exitCode = 1;
    });
}

/** A run config and the model directory's template + tokenizer (no weights needed). */
async function loadRun(configPath: string) {
  const config = parseConfig(RunConfig, readYaml(configPath), configPath);
  const ctx = await loadSampleContext(resolvePath(config.model), lossPolicy(config));
  return { config, ctx };
}
