// normalizeText (exact dedup's key) has a fast path for ASCII text and for single spaces; it must equal the plain
// definition (NFKC, lower case, \p{P}\p{S} runs → " ", whitespace runs → " ", trim) on every code point.
import { describe, expect, it } from "vitest";
import { normalizeText } from "../src/data/clean.ts";

const reference = (s: string) =>
  s
    .normalize("NFKC")
    .toLowerCase()
    .replace(/[\p{P}\p{S}]+/gu, " ")
    .replace(/\s+/g, " ")
    .trim();

describe("normalizeText", () => {
  it("equals the plain definition around every code point and on mixed whitespace", () => {
    const diffs: number[] = [];
    for (let c = 0; c < 0x30000; c++) {
      if (c >= 0xd800 && c <= 0xdfff) continue;
      const ch = String.fromCodePoint(c);
      for (const s of [`a${ch}  b`, `${ch}${ch}`, `x ${ch}\t\u3000y!`]) {
        if (normalizeText(s) !== reference(s)) diffs.push(c);
      }
    }
    expect(diffs.slice(0, 10)).toEqual([]);
    expect(normalizeText("  Hello,  World!\r\n\u00a0ok ")).toBe("hello world ok");
  });
});
