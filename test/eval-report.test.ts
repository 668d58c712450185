// The report writer: Markdown, JSON and a self-contained HTML page.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { histogram, renderHtml, writeReport } from "../src/eval/report.ts";
import { scoreAnswer } from "../src/eval/text-metrics.ts";

const VOID = new Set(["meta", "br", "hr", "img", "input", "link", "area", "base", "col", "source", "wbr"]);

/** A small well-formedness check: tags nest and close (void and `/>` tags excepted), no stray `<` or `&`. */
function checkHtml(html: string): string[] {
  const problems: string[] = [];
  const stack: string[] = [];
  const body = html.replace(/^<!DOCTYPE html>\s*/i, "");
  const tag = /<(\/?)([a-zA-Z][a-zA-Z0-9]*)((?:\s+[a-zA-Z][a-zA-Z0-9:-]*(?:="[^"<>]*")?)*)\s*(\/?)>/y;
  for (let i = 0; i < body.length; ) {
    const c = body[i];
    if (c === "<") {
      tag.lastIndex = i;
      const m = tag.exec(body);
      if (!m) {
        problems.push(`bad tag at ${i}: ${body.slice(i, i + 30)}`);
        i++;
        continue;
      }
      const [, close, name, , selfClose] = m;
      const n = name.toLowerCase();
      if (close) {
        const open = stack.pop();
        if (open !== n) problems.push(`</${n}> closes <${open}> at ${i}`);
      } else if (!selfClose && !VOID.has(n)) stack.push(n);
      i = tag.lastIndex;
    } else if (c === "&") {
      if (!/^&(?:amp|lt|gt|quot|#\d+);/.test(body.slice(i, i + 8))) problems.push(`bare & at ${i}`);
      i++;
    } else if (c === ">") {
      problems.push(`stray > at ${i}`);
      i++;
    } else i++;
  }
  if (stack.length) problems.push(`unclosed: ${stack.join(",")}`);
  return problems;
}

const refs = [
  "退款将在5至7个工作日内退回原卡。",
  "The transfer fee is 25 USD.",
  "Open a dispute within 120 days.",
];
const outputs: Record<string, string[]> = {
  base: ["退款大概需要一周。", "Fees vary <by country> & type.", "Contact support."],
  "base+RAG": ["退款5至7个工作日退回。", "The fee is 25 USD.", "Dispute within 120 days."],
  tuned: ["退款将在5至7个工作日内退回原卡。", "The transfer fee is 25 USD.", "You can't dispute it."],
};
const models = Object.entries(outputs).map(([name, outs]) => {
  const examples = outs.map((o, i) => ({
    id: `q${i}`,
    input: `question ${i}`,
    reference: refs[i],
    output: o,
    scores: { ...scoreAnswer(o, refs[i]) },
  }));
  const mean = (k: "token_f1" | "rouge_l" | "exact_match") =>
    examples.reduce((s, e) => s + e.scores[k], 0) / examples.length;
  return {
    name,
    metrics: {
      token_f1: mean("token_f1"),
      rouge_l: mean("rouge_l"),
      exact_match: mean("exact_match"),
      tool_accuracy: 0.625,
    },
    examples,
  };
});

describe("report", () => {
  const dir = mkdtempSync(join(tmpdir(), "tuna-eval-report-"));
  const paths = writeReport(dir, { title: "Payment bot <v1>", models, rank_metric: "token_f1", worst: 3 });
  const html = readFileSync(paths.html, "utf8");
  const md = readFileSync(paths.markdown, "utf8");
  const json = JSON.parse(readFileSync(paths.json, "utf8"));

  it("HTML is well-formed and self-contained", () => {
    expect(checkHtml(html)).toEqual([]);
    expect(html.startsWith("<!DOCTYPE html>")).toBe(true);
    expect(html).not.toMatch(/<script|<link|\ssrc=|href=|url\(|@import/i);
    expect(html).toContain("<title>Payment bot &lt;v1&gt;</title>");
    // The checker itself catches what it should.
    expect(checkHtml("<div><p>x</div>")).not.toEqual([]);
    expect(checkHtml("<p>a & b</p>")).not.toEqual([]);
  });

  it("every model's metric values appear in all three formats", () => {
    for (const m of models) {
      for (const [k, v] of Object.entries(m.metrics)) {
        const s = Number.isInteger(v) ? String(v) : v.toFixed(3);
        expect(html, `${m.name} ${k}`).toContain(`>${s}<`);
        expect(md).toContain(` ${s} |`);
        expect(json.models.find((x: { name: string }) => x.name === m.name).metrics[k]).toBe(v);
      }
    }
    expect(md).toContain("| model | token_f1 | rouge_l | exact_match | tool_accuracy |");
  });

  it("a bar per model per metric and a histogram per model per scored metric", () => {
    const bars = html.match(/<rect [^>]*><title>(base|base\+RAG|tuned): [\d.]+<\/title><\/rect>/g) ?? [];
    expect(bars).toHaveLength(models.length * 4);
    expect(html).toContain("<title>tuned: 0.625</title>");
    // token_f1, rouge_l, exact_match have per-example scores; 10 bins each, per model.
    expect((html.match(/aria-label="[^"]*(token_f1|rouge_l|exact_match)"/g) ?? []).length).toBe(3 + 3 * 3);
    expect(html).toContain("tuned (n=3)");
  });

  it("the worst examples of the last model, beside the other models' answers, escaped", () => {
    expect(json.worst_examples.focus).toBe("tuned");
    const ids = json.worst_examples.rows.map((r: { id: string }) => r.id);
    expect(ids).toHaveLength(3);
    expect(ids[0]).toBe("q2"); // "You can't dispute it." is tuned's worst by token F1
    expect(html).toContain("Worst examples of tuned by token_f1");
    expect(html).toContain("You can&#39;t dispute it.");
    expect(html).toContain("Fees vary &lt;by country&gt; &amp; type.");
    expect(md).toContain("### q2");
  });

  it("histogram bins", () => {
    expect(histogram([0, 0.05, 0.5, 1, 1])).toEqual({ lo: 0, hi: 1, counts: [2, 0, 0, 0, 0, 1, 0, 0, 0, 2] });
  });

  it("rejects a report without models", () => {
    expect(() => renderHtml({ models: [] })).toThrow();
  });
});
