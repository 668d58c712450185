// The evaluation report: per-model metric results (base, base+RAG, tuned, tuned+RAG…) → report.md,
// report.json and a self-contained report.html (inline CSS and SVG, no scripts, no external assets), with a
// bar chart per metric, a histogram of per-example scores per metric and model, and the worst examples of
// the focus model beside the other models' answers to the same inputs.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";

export const ExampleResult = z.object({
  id: z.string(),
  input: z.string().optional(),
  reference: z.string().optional(),
  output: z.string(),
  /** metric → score of this example (e.g. token_f1: 0.8, tool_correct: 1). */
  scores: z.record(z.string(), z.number()),
});
export type ExampleResult = z.infer<typeof ExampleResult>;

export const ModelResult = z.object({
  name: z.string().min(1),
  /** metric → aggregate value. */
  metrics: z.record(z.string(), z.number()),
  examples: z.array(ExampleResult).default([]),
});
export type ModelResult = z.input<typeof ModelResult>;

export const EvalReport = z.object({
  title: z.string().default("Evaluation"),
  created: z.string().optional(),
  models: z.array(ModelResult).min(1),
  /** Model whose worst examples are shown (default: the last one, usually the tuned model). */
  focus: z.string().optional(),
  /** Metric that ranks examples for "worst" (default: the first metric of the focus model's examples). */
  rank_metric: z.string().optional(),
  worst: z.number().int().min(0).default(8),
  notes: z.array(z.string()).default([]),
});
export type EvalReportInput = z.input<typeof EvalReport>;
type Report = z.output<typeof EvalReport>;
type Model = z.output<typeof ModelResult>;

/** Numbers are printed the same way in every format, so a reader (and a test) can find them. */
export function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toFixed(3);
}

export function escapeHtml(s: string): string {
  return s
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

const escapeMd = (s: string) => s.replace(/[|\\`*_[\]<>]/g, "\\$&").replace(/\r?\n/g, " ");

function metricNames(models: readonly Model[]): string[] {
  const seen: string[] = [];
  for (const m of models) for (const k of Object.keys(m.metrics)) if (!seen.includes(k)) seen.push(k);
  return seen;
}

interface WorstRow {
  id: string;
  input?: string;
  reference?: string;
  score: number;
  byModel: { model: string; output?: string; score?: number }[];
}

function worstExamples(r: Report): { metric: string; focus: string; rows: WorstRow[] } | undefined {
  const focus = r.models.find((m) => m.name === r.focus) ?? r.models[r.models.length - 1];
  const metric = r.rank_metric ?? Object.keys(focus.examples[0]?.scores ?? {})[0];
  if (metric === undefined || r.worst === 0) return undefined;
  const ranked = focus.examples
    .map((e, i) => ({ e, i }))
    .filter(({ e }) => e.scores[metric] !== undefined)
    .sort((a, b) => a.e.scores[metric] - b.e.scores[metric] || a.i - b.i)
    .slice(0, r.worst);
  const rows = ranked.map(({ e }) => ({
    id: e.id,
    input: e.input,
    reference: e.reference,
    score: e.scores[metric],
    byModel: r.models.map((m) => {
      const x = m.examples.find((y) => y.id === e.id);
      return { model: m.name, output: x?.output, score: x?.scores[metric] };
    }),
  }));
  return { metric, focus: focus.name, rows };
}

export function renderMarkdown(input: EvalReportInput): string {
  const r = EvalReport.parse(input);
  const metrics = metricNames(r.models);
  const lines = [`# ${r.title}`, ""];
  if (r.created) lines.push(`Created ${r.created}.`, "");
  for (const n of r.notes) lines.push(`- ${n}`);
  if (r.notes.length) lines.push("");
  lines.push(`| model | ${metrics.join(" | ")} |`, `|---|${metrics.map(() => "---:").join("|")}|`);
  for (const m of r.models) {
    lines.push(
      `| ${escapeMd(m.name)} | ${metrics.map((k) => (k in m.metrics ? fmt(m.metrics[k]) : "–")).join(" | ")} |`,
    );
  }
  const worst = worstExamples(r);
  if (worst?.rows.length) {
    lines.push("", `## Worst examples of ${escapeMd(worst.focus)} by ${worst.metric}`, "");
    for (const row of worst.rows) {
      lines.push(`### ${escapeMd(row.id)} (${worst.metric} ${fmt(row.score)})`, "");
      if (row.input) lines.push(`- input: ${escapeMd(row.input)}`);
      if (row.reference) lines.push(`- reference: ${escapeMd(row.reference)}`);
      for (const b of row.byModel) {
        lines.push(
          `- ${escapeMd(b.model)}${b.score === undefined ? "" : ` (${fmt(b.score)})`}: ${escapeMd(b.output ?? "–")}`,
        );
      }
      lines.push("");
    }
  }
  return `${lines.join("\n").trimEnd()}\n`;
}

export function renderJson(input: EvalReportInput): string {
  const r = EvalReport.parse(input);
  const worst = worstExamples(r);
  return `${JSON.stringify({ ...r, metric_names: metricNames(r.models), worst_examples: worst ?? null }, null, 2)}\n`;
}

const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];

/** One bar per model for one metric. Bars scale to max(1, largest value) so 0–1 metrics share a scale. */
function barChart(metric: string, models: readonly Model[]): string {
  const vals = models.map((m) => m.metrics[metric]);
  const top = Math.max(1, ...vals.filter((v) => v !== undefined));
  const barW = 56;
  const gap = 20;
  const h = 160;
  const w = models.length * (barW + gap) + gap;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h + 50}" role="img" aria-label="${escapeHtml(metric)}">`,
    `<line x1="0" y1="${h + 10}" x2="${w}" y2="${h + 10}" stroke="#999"/>`,
  ];
  models.forEach((m, i) => {
    const v = m.metrics[metric];
    const x = gap + i * (barW + gap);
    if (v !== undefined) {
      const bh = Math.max(0, (v / top) * h);
      parts.push(
        `<rect x="${x}" y="${(h + 10 - bh).toFixed(1)}" width="${barW}" height="${bh.toFixed(1)}" fill="${COLORS[i % COLORS.length]}"><title>${escapeHtml(m.name)}: ${fmt(v)}</title></rect>`,
        `<text x="${x + barW / 2}" y="${(h + 5 - bh).toFixed(1)}" text-anchor="middle" font-size="12">${fmt(v)}</text>`,
      );
    }
    parts.push(
      `<text x="${x + barW / 2}" y="${h + 28}" text-anchor="middle" font-size="11">${escapeHtml(m.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("");
}

/** Histogram of one model's per-example scores for one metric, 10 bins over [min(0, lo), max(1, hi)]. */
export function histogram(
  values: readonly number[],
  bins = 10,
): { lo: number; hi: number; counts: number[] } {
  const lo = Math.min(0, ...values);
  const hi = Math.max(1, ...values);
  const counts = new Array<number>(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]++;
  return { lo, hi, counts };
}

function histogramSvg(model: string, metric: string, values: readonly number[], color: string): string {
  const { lo, hi, counts } = histogram(values);
  const top = Math.max(1, ...counts);
  const w = 220;
  const h = 90;
  const bw = w / counts.length;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h + 34}" role="img" aria-label="${escapeHtml(`${model} ${metric}`)}">`,
  ];
  counts.forEach((c, i) => {
    const bh = (c / top) * h;
    const from = lo + ((hi - lo) * i) / counts.length;
    const to = lo + ((hi - lo) * (i + 1)) / counts.length;
    parts.push(
      `<rect x="${(i * bw + 1).toFixed(1)}" y="${(h - bh).toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${bh.toFixed(1)}" fill="${color}"><title>${fmt(from)}–${fmt(to)}: ${c}</title></rect>`,
    );
  });
  parts.push(
    `<line x1="0" y1="${h}" x2="${w}" y2="${h}" stroke="#999"/>`,
    `<text x="0" y="${h + 14}" font-size="10">${fmt(lo)}</text>`,
    `<text x="${w}" y="${h + 14}" font-size="10" text-anchor="end">${fmt(hi)}</text>`,
    `<text x="${w / 2}" y="${h + 28}" font-size="11" text-anchor="middle">${escapeHtml(model)} (n=${values.length})</text>`,
    "</svg>",
  );
  return parts.join("");
}

export function renderHtml(input: EvalReportInput): string {
  const r = EvalReport.parse(input);
  const metrics = metricNames(r.models);
  const e = escapeHtml;
  const out: string[] = [
    "<!DOCTYPE html>",
    '<html lang="en">',
    "<head>",
    '<meta charset="utf-8">',
    `<title>${e(r.title)}</title>`,
    "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}" +
      "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}td.num{text-align:right}" +
      ".charts{display:flex;flex-wrap:wrap;gap:24px}figure{margin:0}pre{white-space:pre-wrap;margin:0;max-width:40em}</style>",
    "</head>",
    "<body>",
    `<h1>${e(r.title)}</h1>`,
  ];
  if (r.created) out.push(`<p>Created ${e(r.created)}.</p>`);
  if (r.notes.length) out.push(`<ul>${r.notes.map((n) => `<li>${e(n)}</li>`).join("")}</ul>`);
  out.push(
    "<h2>Metrics</h2>",
    "<table>",
    `<tr><th>model</th>${metrics.map((k) => `<th>${e(k)}</th>`).join("")}</tr>`,
  );
  for (const m of r.models) {
    out.push(
      `<tr><td>${e(m.name)}</td>${metrics.map((k) => `<td class="num">${k in m.metrics ? fmt(m.metrics[k]) : "–"}</td>`).join("")}</tr>`,
    );
  }
  out.push("</table>", '<div class="charts">');
  for (const k of metrics)
    out.push(`<figure>${barChart(k, r.models)}<figcaption>${e(k)}</figcaption></figure>`);
  out.push("</div>");
  const exampleKeys = new Set(r.models.flatMap((m) => m.examples.flatMap((x) => Object.keys(x.scores))));
  const distMetrics = [...new Set([...metrics, ...exampleKeys])].filter((k) => exampleKeys.has(k));
  if (distMetrics.length) {
    out.push("<h2>Score distributions</h2>");
    for (const k of distMetrics) {
      out.push(`<h3>${e(k)}</h3>`, '<div class="charts">');
      r.models.forEach((m, i) => {
        const vals = m.examples.map((x) => x.scores[k]).filter((v): v is number => v !== undefined);
        if (vals.length)
          out.push(`<figure>${histogramSvg(m.name, k, vals, COLORS[i % COLORS.length])}</figure>`);
      });
      out.push("</div>");
    }
  }
  const worst = worstExamples(r);
  if (worst?.rows.length) {
    out.push(
      `<h2>Worst examples of ${e(worst.focus)} by ${e(worst.metric)}</h2>`,
      "<table>",
      `<tr><th>id</th><th>input</th><th>reference</th>${r.models.map((m) => `<th>${e(m.name)}</th>`).join("")}</tr>`,
    );
    for (const row of worst.rows) {
      const cells = row.byModel.map(
        (b) =>
          `<td><pre>${e(b.output ?? "–")}</pre>${b.score === undefined ? "" : `<p>${e(worst.metric)} ${fmt(b.score)}</p>`}</td>`,
      );
      out.push(
        `<tr><td>${e(row.id)}</td><td><pre>${e(row.input ?? "")}</pre></td><td><pre>${e(row.reference ?? "")}</pre></td>${cells.join("")}</tr>`,
      );
    }
    out.push("</table>");
  }
  out.push("</body>", "</html>");
  return `${out.join("\n")}\n`;
}

/** Writes report.md, report.json and report.html into `dir`; returns their paths. */
export function writeReport(
  dir: string,
  input: EvalReportInput,
): { markdown: string; json: string; html: string } {
  mkdirSync(dir, { recursive: true });
  const paths = {
    markdown: join(dir, "report.md"),
    json: join(dir, "report.json"),
    html: join(dir, "report.html"),
  };
  writeFileSync(paths.markdown, renderMarkdown(input));
  writeFileSync(paths.json, renderJson(input));
  writeFileSync(paths.html, renderHtml(input));
  return paths;
}
