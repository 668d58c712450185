// The Python that tests use as the reference (transformers, tokenizers, peft): TUNA_PYTHON or the .venv.
import { join } from "node:path";
import { REPO_ROOT } from "../../src/engine/runner.ts";

export function testPython(): string {
  return process.env.TUNA_PYTHON ?? join(REPO_ROOT, ".venv", "bin", "python");
}
