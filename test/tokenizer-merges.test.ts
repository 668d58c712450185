// The BPE merge table (bpe.ts MergeTable): pair → rank and rank → merged id, checked against a Map on random pairs,
// including repeated pairs (the first rank wins, as in HF), pairs that are not merges, and more merges than 2^18 (a
// Llama 3-sized table: the fingerprint bits above the rank shrink).
import { describe, expect, it } from "vitest";
import { mulberry32 } from "../bench/tokenizer/corpus.ts";
import { MergeTable } from "../src/tokenizer/bpe.ts";

function check(merges: number, vocab: number, seed: number) {
  const rnd = mulberry32(seed);
  const table = new MergeTable(merges);
  const ref = new Map<string, [number, number]>();
  const pairs: [number, number][] = [];
  for (let r = 0; r < merges; r++) {
    // One in 50 repeats an earlier pair (ignored: the first rank stays).
    const [a, b] =
      r > 0 && rnd() < 0.02
        ? pairs[Math.floor(rnd() * pairs.length)]
        : [Math.floor(rnd() * vocab), Math.floor(rnd() * vocab)];
    pairs.push([a, b]);
    const merged = vocab + r;
    table.set(a, b, r, merged);
    if (!ref.has(`${a},${b}`)) ref.set(`${a},${b}`, [r, merged]);
  }
  // Mismatches collected as text (an expect per lookup would take most of the test's time).
  const wrong: string[] = [];
  for (const [a, b] of pairs) {
    const [rank, merged] = ref.get(`${a},${b}`)!;
    const got = table.find(a, b);
    if (got !== rank || table.mergedOf(got) !== merged || !table.isPair(got, a, b)) {
      wrong.push(`(${a}, ${b}): rank ${got} merged ${table.mergedOf(got)}, expected ${rank} ${merged}`);
    }
    // isPair (the heap's stale-entry check) is true only for that rank's own pair.
    const other = Math.floor(rnd() * merges);
    const [oa, ob] = pairs[other];
    if (table.isPair(other, a, b) !== (oa === a && ob === b)) wrong.push(`isPair(${other}, ${a}, ${b})`);
  }
  let misses = 0;
  for (let k = 0; k < merges; k++) {
    const a = Math.floor(rnd() * vocab);
    const b = Math.floor(rnd() * vocab);
    const want = ref.get(`${a},${b}`)?.[0] ?? -1;
    const got = table.find(a, b);
    if (got !== want) wrong.push(`(${a}, ${b}): rank ${got}, expected ${want}`);
    if (want < 0) misses++;
  }
  expect(wrong.slice(0, 5)).toEqual([]);
  expect(misses).toBeGreaterThan(merges * 0.5);
}

describe("MergeTable", () => {
  it("matches a Map on 151k merges over a Qwen-sized vocab, with repeats and misses", () => {
    check(151_387, 151_643, 1);
  });
  it("matches a Map on 300k merges (ranks need 19 bits) over a small vocab (dense pairs)", () => {
    check(300_000, 2_000, 2);
  });
  it("handles tiny tables (rank 0 only, and none)", () => {
    const t = new MergeTable(1);
    expect(t.find(3, 4)).toBe(-1);
    t.set(3, 4, 0, 7);
    expect(t.find(3, 4)).toBe(0);
    expect(t.mergedOf(0)).toBe(7);
    expect(t.find(4, 3)).toBe(-1);
    expect(new MergeTable(0).find(0, 0)).toBe(-1);
  });
});
