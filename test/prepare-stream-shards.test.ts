// SplitWriter's staging buffer (src/pack/shards.ts): spill and shard writes go through a buffer that is flushed
// when full. With a buffer of a few samples (and samples larger than it, and a truncated one), the shards must be
// byte-identical to those written with the default 1 MB buffer, across several shard files.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SplitWriter } from "../src/pack/shards.ts";

function writeAll(dir: string, stageBytes: number | undefined) {
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
    results.push(w.add({ ids, lossWeight, source: `mem:${k}` }));
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
});
