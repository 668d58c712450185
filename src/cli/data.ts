// `tuna data convert` and `tuna data validate`. (`preview` and `stats` need the chat template and tokenizer;
// they come when those rooms land.)
import type { Command } from "commander";
import { convertBanking77 } from "../data/convert/banking77.ts";
import { convertBfcl } from "../data/convert/bfcl.ts";
import { newConvertReport, type OpenAIRecord, writeJsonl } from "../data/convert/common.ts";
import { convertSgd } from "../data/convert/sgd.ts";
import { type ColumnMap, FORMATS, type Format } from "../data/formats.ts";
import { validateFiles } from "../data/validate.ts";
import { TunaError } from "../errors.ts";

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
}
