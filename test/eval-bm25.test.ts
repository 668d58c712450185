// BM25 retrieval over test/fixtures/eval/kb (English and Chinese payment-policy snippets).
import { describe, expect, it } from "vitest";
import { Bm25Index, loadPassages, retrievalTokens, splitPassages } from "../src/eval/bm25.ts";

const KB = "test/fixtures/eval/kb";

describe("tokens", () => {
  it("CJK bigrams plus Latin words and numbers", () => {
    expect(retrievalTokens("退款到账 Refund 1.5% fee")).toEqual([
      "refund",
      "1.5",
      "fee",
      "退款",
      "款到",
      "到账",
    ]);
    expect(retrievalTokens("卡")).toEqual(["卡"]);
    expect(retrievalTokens("ＶＩＳＡ卡，退款")).toEqual(["visa", "卡", "退款"]);
  });
});

describe("passages", () => {
  it("files in sorted order, cut at headings and paragraphs; only .md and .txt", () => {
    const ps = loadPassages(KB, 200);
    expect(ps.map((p) => [p.id, p.heading, p.line])).toEqual([
      ["fees.txt#0", "", 1],
      ["refunds.md#0", "Refunds", 3],
      ["refunds.md#1", "Refunds", 6],
      ["refunds.md#2", "Disputes", 10],
      ["zh/退款政策.md#0", "退款政策", 3],
      ["zh/退款政策.md#1", "账户冻结", 9],
    ]);
    // Short paragraphs under one heading are joined when they fit.
    expect(ps[0].text).toContain("1.5% currency conversion fee.\nDomestic transfers are free.");
    expect(ps[4].text).toContain("手续费不予退还");
    expect(loadPassages(KB, 800).filter((p) => p.file === "refunds.md")).toHaveLength(2);
  });
  it("a long paragraph is cut at sentence ends, every piece within the limit", () => {
    const sentence = "退款将在审核通过后五至七个工作日内原路退回。";
    const ps = splitPassages("x.md", `# 长段落\n\n${sentence.repeat(12)}`, 100);
    expect(ps.length).toBeGreaterThan(2);
    for (const p of ps) {
      expect(p.text.length).toBeLessThanOrEqual(100);
      expect(p.text.endsWith("。")).toBe(true);
    }
    expect(ps.map((p) => p.text).join("")).toBe(sentence.repeat(12));
  });
  it("a missing folder is a TunaError with a hint", () => {
    expect(() => loadPassages(`${KB}/nope`)).toThrow(/cannot be read/);
  });
});

describe("search", () => {
  const index = Bm25Index.fromFolder(KB, { maxChars: 200 });
  it("finds the right passage for Chinese and English questions", () => {
    expect(index.search("退款多久能到账？", 3)[0].passage.id).toBe("zh/退款政策.md#0");
    expect(index.search("账户被冻结了怎么解冻", 3)[0].passage.id).toBe("zh/退款政策.md#1");
    expect(index.search("How long until a refund reaches my card?", 3)[0].passage.id).toBe("refunds.md#0");
    expect(index.search("international wire transfer cost", 3)[0].passage.id).toBe("fees.txt#0");
    expect(index.search("dispute a charge I do not recognise", 3)[0].passage.id).toBe("refunds.md#2");
  });
  it("top-k, best first, positive scores only, same answer every time", () => {
    const hits = index.search("refund card fee", 5);
    expect(hits.map((h) => h.passage.id)).toEqual(["refunds.md#0", "fees.txt#0", "refunds.md#1"]);
    expect(index.search("refund card fee", 2)).toEqual(hits.slice(0, 2));
    for (let i = 1; i < hits.length; i++) expect(hits[i - 1].score).toBeGreaterThanOrEqual(hits[i].score);
    expect(hits.every((h) => h.score > 0)).toBe(true);
    expect(Bm25Index.fromFolder(KB, { maxChars: 200 }).search("refund card fee", 5)).toEqual(hits);
    expect(index.search("zebra", 5)).toEqual([]);
  });
  it("scores follow Okapi BM25 with Lucene idf (hand-computed)", () => {
    const mk = (id: string, text: string) => ({ id, file: "f", heading: "", line: 1, text });
    const idx = new Bm25Index([mk("a", "refund refund fee"), mk("b", "fee"), mk("c", "card limit")]);
    // N = 3, df(refund) = 1, df(fee) = 2; lengths 3, 1, 2, avg 2; k1 = 1.2, b = 0.75
    const idf = (df: number) => Math.log(1 + (3 - df + 0.5) / (df + 0.5));
    const norm = (len: number) => 1.2 * (1 - 0.75 + (0.75 * len) / 2);
    const term = (df: number, tf: number, len: number) => (idf(df) * tf * 2.2) / (tf + norm(len));
    expect(idx.score("refund fee", 0)).toBeCloseTo(term(1, 2, 3) + term(2, 1, 3), 12);
    expect(idx.score("refund fee", 1)).toBeCloseTo(term(2, 1, 1), 12);
    expect(idx.score("refund fee", 2)).toBe(0);
    // Equal scores keep passage order.
    const tie = new Bm25Index([mk("x", "fee"), mk("y", "other"), mk("z", "fee")]);
    expect(tie.search("fee").map((h) => h.passage.id)).toEqual(["x", "z"]);
  });
});
