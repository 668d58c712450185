// Near-duplicate detection (src/data/clean.ts): the one-permutation MinHash estimates the Jaccard similarity of
// two texts' 5-character shingle sets as well as 128 independent permutations would (standard error
// sqrt(J(1-J)/128) ≤ 0.044), on long texts and on short ones where most bins are empty and filled by
// densification; and the Deduplicator's decisions follow the true similarity.
import { describe, expect, it } from "vitest";
import { fineTomeRecord } from "../bench/prepare/generate.ts";
import { Deduplicator, estimatedJaccard, minhash } from "../src/data/clean.ts";
import type { Conversation } from "../src/data/conversation.ts";

function shingles(s: string, k = 5): Set<string> {
  const out = new Set<string>();
  if (s.length <= k) out.add(s);
  else for (let i = 0; i + k <= s.length; i++) out.add(s.slice(i, i + k));
  return out;
}

function jaccard(a: string, b: string): number {
  const x = shingles(a);
  const y = shingles(b);
  let both = 0;
  for (const s of x) if (y.has(s)) both++;
  return both / (x.size + y.size - both);
}

/** Text i of the FineTome-like generator, and a copy with every `step`-th word replaced. */
function pair(i: number, step: number, chars: number): [string, string] {
  const r = fineTomeRecord(i, 5) as { conversations: { value: string }[] };
  const text = r.conversations
    .map((m) => m.value)
    .join(" ")
    .slice(0, chars);
  const words = text.split(" ");
  const changed = words.map((w, k) => (k % step === step - 1 ? `x${k}q` : w)).join(" ");
  return [text, changed];
}

function errors(chars: number): { err: number[]; truth: number[] } {
  const err: number[] = [];
  const truth: number[] = [];
  let i = 0;
  for (const step of [2, 3, 4, 6, 9, 15, 30]) {
    for (let rep = 0; rep < 6; rep++, i++) {
      const [a, b] = pair(i, step, chars);
      const j = jaccard(a, b);
      truth.push(j);
      err.push(estimatedJaccard(minhash(a, 128), minhash(b, 128)) - j);
    }
  }
  return { err, truth };
}

describe("MinHash (one permutation, densified)", () => {
  it("estimates the Jaccard similarity of long texts", () => {
    const { err, truth } = errors(3000);
    // The pairs span similarities from about 0.1 to 0.9.
    expect(Math.min(...truth)).toBeLessThan(0.3);
    expect(Math.max(...truth)).toBeGreaterThan(0.75);
    const mean = err.reduce((a, b) => a + b, 0) / err.length;
    const meanAbs = err.reduce((a, b) => a + Math.abs(b), 0) / err.length;
    expect(Math.abs(mean)).toBeLessThan(0.02); // unbiased
    expect(meanAbs).toBeLessThan(0.05);
    expect(Math.max(...err.map(Math.abs))).toBeLessThan(0.15);
  });

  it("estimates it for short texts too (fewer shingles than bins: densification)", () => {
    const { err } = errors(90);
    const meanAbs = err.reduce((a, b) => a + Math.abs(b), 0) / err.length;
    expect(meanAbs).toBeLessThan(0.08);
    expect(Math.max(...err.map(Math.abs))).toBeLessThan(0.25);
  });

  it("is deterministic, identical for identical texts, and every bin is filled", () => {
    const [a] = pair(1, 3, 500);
    expect(minhash(a, 128)).toEqual(minhash(`${a}`, 128));
    expect(estimatedJaccard(minhash(a, 128), minhash(a, 128))).toBe(1);
    for (const t of ["", "abc", "hello world", a]) {
      expect(Array.from(minhash(t, 128)).every((v) => v !== 0xffffffff)).toBe(true);
    }
    expect(() => minhash(a, 100)).toThrow(/power of two/);
  });
});

describe("Deduplicator near", () => {
  const conv = (text: string): Conversation => ({
    source: "t",
    messages: [
      { role: "user", content: "Question?" },
      { role: "assistant", content: text },
    ],
  });

  it("drops texts above the threshold and keeps those well below it", () => {
    const d = new Deduplicator({ exact: false, near: true, threshold: 0.8 });
    let near = 0;
    let kept = 0;
    for (let i = 0; i < 30; i++) {
      const [a, b] = pair(100 + i, 40, 2000); // one word in 40 changed: J ≈ 0.9
      const [c] = pair(500 + i, 40, 2000); // another text from the same vocabulary
      expect(jaccard(a, b)).toBeGreaterThan(0.85);
      expect(jaccard(a, c)).toBeLessThan(0.5);
      expect(d.check(conv(a))).toBe("new");
      if (d.check(conv(b)) === "near") near++;
      if (d.check(conv(c)) === "new") kept++;
    }
    expect(near).toBeGreaterThanOrEqual(29);
    expect(kept).toBe(30);
  });
});

describe("Deduplicator exact", () => {
  it("finds every repeat among thousands of texts (the digest table grows several times)", () => {
    const d = new Deduplicator({ exact: true, near: false });
    const conv = (i: number): Conversation => ({
      source: `t:${i}`,
      messages: [
        { role: "user", content: `Where is my refund number ${i}?` },
        { role: "assistant", content: `Refund ${i} is on its way.` },
      ],
    });
    for (let i = 0; i < 5000; i++) expect(d.check(conv(i))).toBe("new");
    let exact = 0;
    for (let i = 0; i < 5000; i += 3) if (d.check(conv(i)) === "exact") exact++;
    expect(exact).toBe(1667);
    expect(d.check(conv(5000))).toBe("new");
  });
});
