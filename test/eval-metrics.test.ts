// Answer metrics (Chinese-aware), GSM8K extraction and the forgetting guard, and the thinking check.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { extractGsm8kAnswer, forgettingGuard, gsm8kAccuracy, gsm8kReference } from "../src/eval/gsm8k.ts";
import {
  answerTokens,
  exactMatch,
  lcsLength,
  rougeL,
  scoreAnswer,
  scoreAnswers,
  tokenF1,
} from "../src/eval/text-metrics.ts";
import { thinkingCheck, thinkingRate, thinkingShape } from "../src/eval/thinking.ts";

describe("answer tokens", () => {
  it("CJK characters are single tokens, Latin words split on spaces and punctuation", () => {
    expect(answerTokens("退款需要3-5个工作日, Refund fee: 0.6%!")).toEqual([
      "退",
      "款",
      "需",
      "要",
      "3",
      "5",
      "个",
      "工",
      "作",
      "日",
      "refund",
      "fee",
      "0.6",
    ]);
    expect(answerTokens("カードを止めて")).toEqual(["カ", "ー", "ド", "を", "止", "め", "て"]);
  });
  it("full-width and CJK punctuation are dropped like ASCII; full-width letters fold to ASCII", () => {
    expect(answerTokens("您好！请问，“订单号”是？（ＡＢＣ）")).toEqual([
      "您",
      "好",
      "请",
      "问",
      "订",
      "单",
      "号",
      "是",
      "abc",
    ]);
    expect(answerTokens("1,000 元")).toEqual(["1000", "元"]);
    expect(answerTokens("")).toEqual([]);
    expect(answerTokens(" 。，！ ")).toEqual([]);
  });
});

describe("exact match, token F1, ROUGE-L", () => {
  it("exact match ignores case, spacing and punctuation of either width", () => {
    expect(exactMatch("退款3天。", "退款 3 天")).toBe(1);
    expect(exactMatch("The fee is 2%.", "the FEE is 2")).toBe(1);
    expect(exactMatch("退款3天", "退款5天")).toBe(0);
    expect(exactMatch("", "")).toBe(1);
    expect(exactMatch("", "x")).toBe(0);
  });
  it("token F1 on Chinese: character overlap", () => {
    // prediction 退款成功 (4 tokens), reference 退款失败了 (5 tokens); overlap 退 款 = 2
    const r = tokenF1("退款成功", "退款失败了");
    expect(r.precision).toBeCloseTo(2 / 4, 12);
    expect(r.recall).toBeCloseTo(2 / 5, 12);
    expect(r.f1).toBeCloseTo((2 * 0.5 * 0.4) / 0.9, 12);
  });
  it("token F1 counts repeated tokens at most as often as both sides have them", () => {
    const r = tokenF1("the the the", "the cat");
    expect(r.precision).toBeCloseTo(1 / 3, 12);
    expect(r.recall).toBeCloseTo(1 / 2, 12);
  });
  it("mixed Chinese and English", () => {
    // pred: 请 用 paypal 付 款 (5) ; ref: 用 paypal 或 visa 付 款 (6) ; overlap 用 paypal 付 款 = 4
    const r = tokenF1("请用PayPal付款", "用 PayPal 或 Visa 付款。");
    expect(r.f1).toBeCloseTo((2 * (4 / 5) * (4 / 6)) / (4 / 5 + 4 / 6), 12);
  });
  it("empty answers: both empty agree, one empty scores 0", () => {
    expect(tokenF1("", "").f1).toBe(1);
    expect(tokenF1("", "退款").f1).toBe(0);
    expect(rougeL("。", "").f1).toBe(1);
    expect(rougeL("退款", "").f1).toBe(0);
  });
  it("ROUGE-L uses order (LCS), F1 does not", () => {
    expect(lcsLength(["a", "b", "c", "d"], ["a", "c", "b", "d"])).toBe(3);
    expect(tokenF1("款退", "退款").f1).toBe(1);
    expect(rougeL("款退", "退款").f1).toBeCloseTo(0.5, 12);
    // pred 请 先 退 款 再 付 (6) ; ref 先 付 款 再 退 (5) ; LCS 先 款 再 = 3
    const r = rougeL("请先退款再付", "先付款再退");
    expect(r.precision).toBeCloseTo(3 / 6, 12);
    expect(r.recall).toBeCloseTo(3 / 5, 12);
  });
  it("best over several references, and means", () => {
    expect(scoreAnswer("3天", ["五天", "3 天"])).toEqual({ exact_match: 1, token_f1: 1, rouge_l: 1 });
    const { mean, per_example } = scoreAnswers([
      { prediction: "a b", references: "a b" },
      { prediction: "a", references: "b" },
    ]);
    expect(per_example).toHaveLength(2);
    expect(mean).toEqual({ exact_match: 0.5, token_f1: 0.5, rouge_l: 0.5 });
  });
});

describe("GSM8K", () => {
  const rows = readFileSync("../shared/data/gsm8k/test_first300.jsonl", "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { question: string; answer: string });

  it("every reference of the 300 has a number, and scoring the references themselves gives 1.0", () => {
    expect(rows).toHaveLength(300);
    expect(rows.every((r) => gsm8kReference(r.answer) !== undefined)).toBe(true);
    expect(gsm8kReference(rows[0].answer)).toBe(18); // Janet's ducks
    const r = gsm8kAccuracy(rows.map((r) => ({ output: r.answer, answer: r.answer })));
    expect(r).toMatchObject({ accuracy: 1, total: 300, correct: 300 });
  });
  it("a wrong final answer is counted wrong", () => {
    const outputs = rows.map((r, i) => ({
      output:
        i % 3 === 0
          ? `So the answer is ${gsm8kReference(r.answer)! + 1}.`
          : `The answer is ${gsm8kReference(r.answer)}.`,
      answer: r.answer,
    }));
    expect(gsm8kAccuracy(outputs).correct).toBe(200);
  });
  it("extraction: last number, commas, $, \\boxed{}, reasoning ignored", () => {
    expect(extractGsm8kAnswer("She earns 16 - 3 - 4 = 9 eggs, so 9 * 2 = $18 a day.")).toBe(18);
    expect(extractGsm8kAnswer("Total: $1,234.50.")).toBe(1234.5);
    expect(extractGsm8kAnswer("The answer is \\boxed{1,000} (not 999).")).toBe(1000);
    expect(extractGsm8kAnswer("\\boxed{\\frac{7}{1}} hmm, and \\boxed{42}")).toBe(42);
    expect(extractGsm8kAnswer("<think>\nMaybe 7? No, 8.\n</think>\n\nIt is 12 apples.")).toBe(12);
    expect(extractGsm8kAnswer("He lost -5 dollars")).toBe(-5);
    expect(extractGsm8kAnswer("no idea")).toBeUndefined();
    expect(gsm8kReference("... #### 1,200")).toBe(1200);
  });
  it("forgetting guard flags a drop larger than allowed", () => {
    expect(forgettingGuard(0.8, 0.78, 0.05).flagged).toBe(false);
    expect(forgettingGuard(0.75, 0.7, 0.05).flagged).toBe(false); // exactly at the limit
    const v = forgettingGuard(0.8, 0.7, 0.05);
    expect(v.flagged).toBe(true);
    expect(v.drop).toBeCloseTo(0.1, 12);
    expect(v.message).toContain("80.0%");
    expect(forgettingGuard(0.5, 0.9, 0).flagged).toBe(false);
    expect(() => forgettingGuard(80, 70, 5)).toThrow(RangeError);
  });
});

describe("thinking check", () => {
  it("shapes", () => {
    expect(thinkingShape("<think>\nThe fee is 1%.\n</think>\n\n1%")).toBe("reasoned");
    expect(thinkingShape("  <think>\n\n</think>\n\n1%")).toBe("empty_think");
    expect(thinkingShape("1% <think>late</think>")).toBe("no_think");
    expect(thinkingShape("reason first\n</think>\n\nanswer")).toBe("no_think");
    expect(thinkingShape("reason first\n</think>\n\nanswer", { promptOpensThink: true })).toBe("reasoned");
  });
  it("rates with thinking on and off", () => {
    const on = ["<think>a</think>x", "<think>b</think>y", "<think>\n</think>z", "w"];
    const off = ["<think>\n\n</think>\n\nx", "y", "<think>oops</think>z"];
    expect(thinkingRate(on)).toEqual({ total: 4, reasoned: 2, empty_think: 1, no_think: 1, rate: 0.5 });
    const c = thinkingCheck({ on, off });
    expect(c.off.rate).toBeCloseTo(1 / 3, 12);
    expect(c.switchable).toBe(false);
    expect(thinkingCheck({ on: on.slice(0, 2), off: off.slice(0, 2) }).switchable).toBe(true);
    expect(thinkingRate([]).rate).toBe(0);
  });
});
