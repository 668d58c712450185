// Load a model directory's tokenizer.json.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { TunaError } from "../errors.ts";
import { tokenizerFromJson } from "./tokenizer.ts";
import type { Tokenizer } from "./types.ts";

/** Reads `<modelDir>/tokenizer.json`. */
export async function loadTokenizer(modelDir: string): Promise<Tokenizer> {
  const path = join(modelDir, "tokenizer.json");
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TunaError(
      "TOKENIZER_MISSING",
      code === "ENOENT" ? "no such file" : `cannot read: ${(e as Error).message}`,
      { where: path, hint: "pass a Hugging Face model directory that contains tokenizer.json", cause: e },
    );
  }
  return tokenizerFromJson(bytes, path);
}
