// `tuna tokenize` (the real CLI, --jsonl) gives llama.cpp's expected ids for all 43 Qwen2/Qwen3 test vectors.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect, it } from "vitest";
import { REPO_ROOT } from "../src/engine/runner.ts";
import { qwen3TokenizerDir } from "../src/model/init.ts";

it("tuna tokenize --jsonl: exact ids for the 43 shared tokenizer vectors", () => {
  const vectors = join(REPO_ROOT, "../shared/data/tokenizer-vectors");
  const inp = readFileSync(join(vectors, "qwen2.inp"), "utf8").split("\n__ggml_vocab_test__\n");
  const out = readFileSync(join(vectors, "qwen2.out"), "utf8").split("\n");
  inp.pop(); // both files end with a separator / newline
  out.pop();
  expect(inp).toHaveLength(43);
  const r = spawnSync(
    process.execPath,
    [join(REPO_ROOT, "bin/tuna.mjs"), "tokenize", qwen3TokenizerDir(), "--jsonl"],
    {
      input: inp.map((t) => JSON.stringify(t)).join("\n"),
      encoding: "utf8",
    },
  );
  expect(r.status, r.stderr).toBe(0);
  const got = r.stdout
    .trimEnd()
    .split("\n")
    .map((l) => JSON.parse(l) as number[]);
  const want = out.map((l) => (l.trim() === "" ? [] : l.trim().split(" ").map(Number)));
  expect(got).toEqual(want);
});
