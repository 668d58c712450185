// WordCache (src/tokenizer/wordcache.ts) against a Map over the same operations: words looked up in place inside
// longer strings, through the tables' growth (from 4,096 entries) and a tiny table where probes run long.
import { describe, expect, it } from "vitest";
import { MISS, WordCache } from "../src/tokenizer/wordcache.ts";

function check(limit: number, words: number) {
  const cache = new WordCache(limit, 12);
  const ref = new Map<string, number>();
  let seed = 1;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 16) % n;
  };
  // Words over a small alphabet (with a surrogate pair and CJK), so many share prefixes and lengths.
  const alphabet = ["a", "b", " ", "é", "中", "\ud83d\ude00"];
  for (let n = 0; n < words; n++) {
    let w = "";
    const len = 1 + rnd(8);
    while (w.length < len) w += alphabet[rnd(alphabet.length)];
    w = w.slice(0, Math.min(12, w.length));
    const pad = "x".repeat(rnd(4));
    const s = `${pad}${w}yy`; // the word sits inside a longer string
    const got = cache.get(s, pad.length, pad.length + w.length);
    const want = ref.get(w);
    expect(got).toBe(want === undefined ? MISS : want);
    if (want === undefined) {
      if (cache.size >= limit) {
        cache.clear();
        ref.clear();
        cache.get(s, pad.length, pad.length + w.length);
      }
      const v = rnd(3) === 0 ? -(1 + n * 64 + 3) : n;
      cache.set(s, pad.length, pad.length + w.length, v);
      ref.set(w, v);
    }
  }
  return { cache, ref };
}

describe("word cache", () => {
  it("answers like a Map while growing past its first 4,096 entries", () => {
    const { cache, ref } = check(250_000, 60_000);
    expect(cache.size).toBe(ref.size);
    expect(cache.size).toBeGreaterThan(8192);
  });

  it("answers like a Map when emptied every 50 entries", () => {
    const { cache } = check(50, 5_000);
    expect(cache.size).toBeLessThanOrEqual(50);
  });
});
