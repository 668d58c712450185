// Preference pairs and plain text go through reading and validation with the conversations, and are stored
// beside the shards and listed in manifest.json for the training methods that will use them.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { RunConfig } from "../src/config/schema.ts";
import { prepareShards } from "../src/jobs/train/prepare.ts";
import { qwen3TokenizerDir } from "../src/model/init.ts";

it("stores preference pairs and plain text next to the shards and counts them in the manifest", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tuna-records-"));
  const lines = (rows: unknown[]) => `${rows.map((r) => JSON.stringify(r)).join("\n")}\n`;
  writeFileSync(
    join(dir, "chat.jsonl"),
    lines([
      {
        messages: [
          { role: "user", content: "退款多久到账？" },
          { role: "assistant", content: "一般 3–5 个工作日。" },
        ],
      },
      {
        messages: [
          { role: "user", content: "Is there a fee?" },
          { role: "assistant", content: "No fee for refunds." },
        ],
      },
    ]),
  );
  writeFileSync(
    join(dir, "pref.jsonl"),
    lines([
      { prompt: "Can I cancel a transfer?", chosen: "Yes, within 30 minutes.", rejected: "No." },
      { prompt: "Card declined?", chosen: "Let me check your limits.", rejected: "Your problem." },
    ]),
  );
  writeFileSync(join(dir, "text.jsonl"), lines([{ text: "TunaPay settles merchant payments on T+1." }]));
  const config = RunConfig.parse({
    model: "unused",
    data: {
      sources: [
        { path: join(dir, "chat.jsonl") },
        { path: join(dir, "pref.jsonl") },
        { path: join(dir, "text.jsonl") },
      ],
      clean: { dedup: { near: false } },
    },
    pack: { max_length: 256 },
  });
  const dataDir = join(dir, "data");
  const manifest = await prepareShards({ config, modelDir: qwen3TokenizerDir(), dataDir, workers: 0 });
  expect(manifest.splits.train.samples).toBe(2);
  expect(manifest.records).toEqual({
    preference: { count: 2, file: "preference.jsonl" },
    text: { count: 1, file: "text.jsonl" },
  });
  const prefs = readFileSync(join(dataDir, "preference.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  expect(prefs[0]).toMatchObject({
    chosen: { role: "assistant", content: "Yes, within 30 minutes." },
    source: `${join(dir, "pref.jsonl")}:1`,
  });
  expect(JSON.parse(readFileSync(join(dataDir, "manifest.json"), "utf8")).records.text.count).toBe(1);
});
