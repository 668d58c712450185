// SplitWriter's staging buffer (src/pack/shards.ts): spill and shard writes go through a buffer that is flushed
// when full. With a buffer of a few samples (and samples larger than it, and a truncated one), the shards must be
// byte-identical to those written with the default 1 MB buffer, across several shard files.
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SplitWriter } from "../src/pack/shards.ts";

/** A file the samples are written into first (from `at`), for `spilled`. */
type Spill = { fd: number; at: number };

function writeAll(dir: string, stageBytes: number | undefined, spill?: Spill) {
  const w = new SplitWriter({
    dir,
    split: "train",
    maxLength: 64,
    overLength: "truncate",
    shardTokens: 300,
    stageBytes,
  });
  let seed = 7;
  const rnd = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  const results: string[] = [];
  for (let k = 0; k < 120; k++) {
    const n = 2 + Math.floor(rnd() * 80); // some over maxLength: truncated
    const ids = Int32Array.from({ length: n }, (_, i) => k * 1000 + i);
    // Weight 1 from a random point, with the first weight sometimes 1 (written as 0); one sample untrained.
    const from = k === 5 ? n : Math.floor(rnd() * n);
    const lossWeight = Float32Array.from({ length: n }, (_, i) => (i >= from ? 1 : 0));
    let spilled: { fd: number; ids: number; weights: number } | undefined;
    if (spill) {
      spilled = { fd: spill.fd, ids: spill.at, weights: spill.at + 4 * n };
      spill.at += writeSync(spill.fd, new Uint8Array(ids.buffer), 0, 4 * n, spill.at);
      spill.at += writeSync(spill.fd, new Uint8Array(lossWeight.buffer), 0, 4 * n, spill.at);
    }
    results.push(w.add({ ids, lossWeight, source: `mem:${k}`, spilled }));
  }
  return { results, stats: w.finish() };
}

describe("shard writer staging buffer", () => {
  it("writes the same bytes with a tiny staging buffer as with the default", () => {
    const a = mkdtempSync(join(tmpdir(), "tuna-stage-a-"));
    const b = mkdtempSync(join(tmpdir(), "tuna-stage-b-"));
    try {
      const big = writeAll(a, undefined);
      // 100 bytes: flushes every sample or two; samples over 12 tokens (100 bytes of ids + weights) bypass it.
      const small = writeAll(b, 100);
      expect(small.results).toEqual(big.results);
      expect(small.stats).toEqual(big.stats);
      expect(big.stats.shards.length).toBeGreaterThan(3);
      expect(big.stats.truncated).toBeGreaterThan(0);
      expect(big.stats.dropped_no_trained_tokens).toBeGreaterThanOrEqual(1);
      const files = readdirSync(a).sort();
      expect(readdirSync(b).sort()).toEqual(files);
      for (const f of files) expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f)))).toBe(true);
      // The first weight of every sequence is 0 even where the sample's was 1.
      expect(big.stats.trained_tokens).toBeLessThan(big.stats.tokens);
    } finally {
      rmSync(a, { recursive: true, force: true });
      rmSync(b, { recursive: true, force: true });
    }
  });

  it("writes the same bytes from samples that point into a spill file (first weights 1 there, some truncated)", () => {
    const a = mkdtempSync(join(tmpdir(), "tuna-stage-a-"));
    const b = mkdtempSync(join(tmpdir(), "tuna-stage-b-"));
    const fd = openSync(join(b, "..tokens.spill"), "w+");
    try {
      const copied = writeAll(a, undefined);
      const spill = { fd, at: 12 };
      const pointed = writeAll(b, 100, spill);
      expect(spill.at).toBeGreaterThan(12);
      expect(pointed.results).toEqual(copied.results);
      expect(pointed.stats).toEqual(copied.stats);
      for (const f of copied.stats.shards) {
        expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f)))).toBe(true);
      }
    } finally {
      closeSync(fd);
      rmSync(a, { recursive: true, force: true });
      rmSync(b, { recursive: true, force: true });
    }
  });
});
