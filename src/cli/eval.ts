// `tuna eval` — evaluations. `tuna eval tools` scores function calls by BFCL's AST rules (src/eval/bfcl.ts).
import type { Command } from "commander";
import { TunaError } from "../errors.ts";
import { scoreToolFiles } from "../eval/tool-eval.ts";

export function register(program: Command): void {
  const evalCmd = program.command("eval").description("Evaluate models: tool calling, answers, forgetting.");

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
