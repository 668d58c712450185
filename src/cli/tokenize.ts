// `tuna tokenize <model-dir>`: text on stdin → token ids (a JSON array) on stdout, with the model's own
// tokenizer.json; like Hugging Face `encode(text, add_special_tokens=False)`.
import type { Command } from "commander";
import { TunaError } from "../errors.ts";
import { loadTokenizer } from "../tokenizer/index.ts";

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

export function register(program: Command): void {
  program
    .command("tokenize")
    .description(
      "Encode stdin with <model-dir>/tokenizer.json and print the token ids as a JSON array (special-token text becomes its id).",
    )
    .argument("<model-dir>", "a Hugging Face model directory containing tokenizer.json")
    .option("--jsonl", "read one JSON string per line; write one JSON array of ids per line")
    .option("--split-special", "encode special-token text such as <|im_start|> as plain text")
    .action(async (modelDir: string, o: { jsonl?: boolean; splitSpecial?: boolean }) => {
      const tok = await loadTokenizer(modelDir);
      const opts = { splitSpecial: o.splitSpecial ?? false };
      const input = await readStdin();
      const ids = (text: string) => `[${tok.encode(text, opts).join(",")}]\n`;
      if (!o.jsonl) {
        process.stdout.write(ids(input));
        return;
      }
      const lines = input.split("\n");
      if (lines.at(-1) === "") lines.pop();
      const out: string[] = [];
      lines.forEach((line, i) => {
        let text: unknown;
        try {
          text = JSON.parse(line);
        } catch (e) {
          throw new TunaError("CLI_ARGS", `line is not valid JSON: ${(e as Error).message}`, {
            where: `stdin:${i + 1}`,
            hint: 'with --jsonl each line must be one JSON string, e.g. "hello"',
          });
        }
        if (typeof text !== "string") {
          throw new TunaError("CLI_ARGS", `expected a JSON string, got ${line.slice(0, 60)}`, {
            where: `stdin:${i + 1}`,
            hint: 'with --jsonl each line must be one JSON string, e.g. "hello"',
          });
        }
        out.push(ids(text));
      });
      process.stdout.write(out.join(""));
    });
}
