// Preference pairs and plain text are written beside the shards as they are read (src/data/jsonl-writer.ts), never
// held: the bytes are those the code that held them wrote (hashes taken from commit 7ff94e4 on the same input), the
// plan hands each record to onRecord in reading order and keeps only counts, and a failed preparation leaves no
// file. Memory on a 1 GiB file: bench/data/preference-memory.ts.
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { RunConfig } from "../src/config/schema.ts";
import { type OtherRecord, prepareConversationPlan } from "../src/data/prepare.ts";
import { prepareShards } from "../src/jobs/train/prepare.ts";
import { qwen3TokenizerDir } from "../src/model/init.ts";
import { writeRecordInputs as writeInputs } from "./helpers/record-inputs.ts";

let dir: string;

/** sha256 of a file with the test's temporary directory written as "<dir>" (sources name it). */
const sha = (path: string) =>
  createHash("sha256").update(readFileSync(path, "utf8").replaceAll(dir, "<dir>")).digest("hex");

// sha256 of preference.jsonl and text.jsonl written by the code that held the records (commit 7ff94e4).
const OLD = {
  preference: "0dc9f4669b5bcbab90f7a7f88327019aa468931c23064539860979847c201355",
  text: "a36c267363332e2dcc11cee22acc6bdc85ed06840ffd78dc929e5fe432b241d2",
};

const config = (strict = false) =>
  RunConfig.parse({
    model: "unused",
    data: {
      sources: [
        { path: join(dir, "chat.jsonl"), name: "chat" },
        { path: join(dir, "pref.jsonl"), name: "pref" },
        { path: join(dir, "text.jsonl"), name: "text" },
      ],
      validation: { strict },
    },
    pack: { max_length: 4096 },
  });

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "tuna-records-stream-"));
  writeInputs(dir);
});

describe("preference pairs and plain text, streamed", () => {
  it("write the same bytes as the code that held them, on both paths", async () => {
    for (const inMemory of [false, true]) {
      const out = join(dir, `out-${inMemory}`);
      const manifest = await prepareShards({
        config: config(),
        modelDir: qwen3TokenizerDir(),
        dataDir: out,
        workers: 0,
        inMemory,
      });
      expect(manifest.records).toEqual({
        preference: { count: 600, file: "preference.jsonl" },
        text: { count: 250, file: "text.jsonl" },
      });
      expect(sha(join(out, "preference.jsonl"))).toBe(OLD.preference);
      expect(sha(join(out, "text.jsonl"))).toBe(OLD.text);
      expect(readdirSync(out).filter((f) => f.endsWith(".partial"))).toEqual([]);
    }
  });

  it("go to onRecord in reading order; the plan keeps only their counts", async () => {
    const seen: OtherRecord[] = [];
    const plan = await prepareConversationPlan(config().data, {
      onKept: () => {},
      onRecord: async (r) => {
        seen.push(r);
        await new Promise((ok) => setImmediate(ok)); // awaited: backpressure
      },
    });
    expect(plan.records).toEqual({ preference: 600, text: 250 });
    expect(plan.kept).toBe(40);
    expect(seen.map((r) => r.kind)).toEqual([...Array(600).fill("preference"), ...Array(250).fill("text")]);
    expect(seen.slice(0, 600).map((r) => r.value.source)).toEqual(
      Array.from({ length: 600 }, (_, i) => `${join(dir, "pref.jsonl")}:${i + 1}`),
    );
    expect(Object.keys(plan)).not.toContain("preference");
  });

  it("leave no file when the preparation fails after some were written", async () => {
    const bad = join(dir, "bad");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(bad, { recursive: true });
    // 5,000 pairs (over the writer's 1 MiB buffer, so the partial file exists) and then a broken line, strict.
    const pref = readFileSync(join(dir, "pref.jsonl"), "utf8");
    writeFileSync(join(bad, "pref.jsonl"), `${pref.repeat(9)}{"prompt": "x", "chosen": 1}\n`);
    const out = join(bad, "out");
    const c = config(true);
    c.data.sources = [c.data.sources[0], { ...c.data.sources[1], path: join(bad, "pref.jsonl") }];
    await expect(
      prepareShards({ config: c, modelDir: qwen3TokenizerDir(), dataDir: out, workers: 0 }),
    ).rejects.toThrow(/pref\.jsonl:5401/);
    expect(existsSync(join(out, "preference.jsonl"))).toBe(false);
    expect(readdirSync(out).filter((f) => f.startsWith("preference"))).toEqual([]);
  });
});
