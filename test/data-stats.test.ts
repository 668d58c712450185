// `tuna data stats` through the real CLI on the payment-support examples (plus a file of broken records) with a
// tiny model directory. The counts are checked against the files themselves and against the shards that
// `tuna train`'s preparation writes for the same config (two paths, one answer).
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig, readYaml } from "../src/config/load.ts";
import { RunConfig } from "../src/config/schema.ts";
import type { DataStats } from "../src/jobs/data/stats.ts";
import { prepareShards } from "../src/jobs/train/prepare.ts";

const REPO = resolve(import.meta.dirname, "..");
const EX = "examples/payment-support";
const tmp = mkdtempSync(join(tmpdir(), "tuna-data-stats-"));
const model = join(tmp, "tiny");
const config = join(tmp, "run.yaml");
const bad = join(tmp, "bad.jsonl");

function tuna(args: string[]) {
  const r = spawnSync(process.execPath, [join(REPO, "bin/tuna.mjs"), ...args], {
    cwd: REPO,
    encoding: "utf8",
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const lines = (f: string) =>
  readFileSync(join(REPO, f), "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { messages: { role: string; tool_calls?: unknown[] }[] });

const good = (i: number) =>
  JSON.stringify({
    messages: [
      { role: "user", content: `How long does refund ${i} take?` },
      { role: "assistant", content: `Refund ${i} arrives within 5 business days.` },
    ],
  });

let stats: DataStats;
let text: string;

beforeAll(() => {
  expect(tuna(["model", "init", model, "--preset", "tiny"]).code).toBe(0);
  writeFileSync(
    bad,
    [
      good(1),
      '{"messages": [{"role": "user", "content": "broken',
      good(1), // exact duplicate of line 1
      JSON.stringify({
        messages: [
          { role: "assistant", content: "hi" },
          { role: "user", content: "?" },
        ],
      }),
      JSON.stringify({
        messages: [
          { role: "user", content: "Say it twice" },
          { role: "assistant", content: "Done.<|im_end|> And again." },
        ],
      }),
      good(2),
      "",
    ].join("\n"),
  );
  writeFileSync(
    config,
    [
      `model: ${model}`,
      "data:",
      "  sources:",
      `    - { path: ${EX}/style.jsonl, name: style }`,
      `    - { path: ${EX}/knowledge.jsonl, name: knowledge }`,
      `    - { path: ${EX}/reasoning.jsonl, name: reasoning, thinking: true }`,
      `    - { path: ${EX}/tools.jsonl, name: tools }`,
      `    - { path: ${bad}, name: bad }`,
      "  split: { fraction: 0.05 }",
      "  seed: 42",
      "  clean: { dedup: { near: false } }",
      "template: { thinking: false, loss_on: all }",
      "pack: { max_length: 1024 }",
      "",
    ].join("\n"),
  );
  const j = tuna(["data", "stats", config, "--json"]);
  expect(j.code, j.err).toBe(0);
  stats = JSON.parse(j.out);
  const t = tuna(["data", "stats", config]);
  expect(t.code, t.err).toBe(0);
  text = t.out;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("tuna data stats", () => {
  it("counts per source, format and role agree with the files", () => {
    const files = {
      style: "style.jsonl",
      knowledge: "knowledge.jsonl",
      reasoning: "reasoning.jsonl",
      tools: "tools.jsonl",
    };
    const roles: Record<string, number> = {};
    let calls = 0;
    for (const [name, f] of Object.entries(files)) {
      const recs = lines(`${EX}/${f}`);
      const s = stats.sources.find((x) => x.name === name)!;
      expect(s.kept).toBe(recs.length);
      expect(s.formats).toEqual({ openai: recs.length });
      expect(s.files).toBe(1);
      for (const r of recs) {
        for (const m of r.messages) {
          roles[m.role] = (roles[m.role] ?? 0) + 1;
          calls += m.tool_calls?.length ?? 0;
        }
      }
    }
    // bad.jsonl: 6 lines, one broken JSON (no record, so no format); kept: lines 1 and 6 and the <|im_end|> one
    // (the template rejects it later; the reader cannot know).
    const b = stats.sources.find((x) => x.name === "bad")!;
    expect(b.formats).toEqual({ openai: 5 });
    expect(b.kept).toBe(3);
    roles.user += 3;
    roles.assistant += 3;
    expect(stats.roles).toEqual(roles);
    expect(stats.tool_calls).toBe(calls);
    expect(stats.formats).toEqual({ openai: 302 + 5 });
    expect(stats.conversations.train + stats.conversations.validation).toBe(302 + 3);
  });

  it("samples add up: thinking modes, sources, histogram buckets", () => {
    expect(stats.samples).toBeGreaterThan(302);
    expect(stats.thinking.on + stats.thinking.off).toBe(stats.samples);
    // Only reasoning.jsonl is rendered with thinking on (the source sets it; the run default is off).
    expect(stats.thinking.on).toBe(stats.sources.find((s) => s.name === "reasoning")!.samples);
    expect(stats.sources.reduce((a, s) => a + s.samples, 0)).toBe(stats.samples);
    expect(stats.sources.reduce((a, s) => a + s.tokens, 0)).toBe(stats.tokens);
    expect(stats.length_histogram.reduce((a, h) => a + h.count, 0)).toBe(stats.samples);
    expect(stats.length_histogram.map((h) => h.upper)).toEqual([64, 128, 256, 512, 1024, null]);
    expect(stats.trained_share).toBeCloseTo(stats.trained_tokens / stats.tokens, 12);
    expect(stats.trained_tokens).toBeLessThan(stats.tokens);
    expect(stats.length.min).toBeLessThanOrEqual(stats.length.median);
    expect(stats.length.median).toBeLessThanOrEqual(stats.length.max);
  });

  it("pack efficiency and over-length drops are those of the shards tuna train writes", async () => {
    const cfg = parseConfig(RunConfig, readYaml(config), config);
    const m = await prepareShards({ config: cfg, modelDir: model, dataDir: join(tmp, "shards") });
    const tr = m.splits.train;
    expect(stats.pack.packs).toBe(tr.packs);
    expect(stats.pack.efficiency).toBeCloseTo(tr.pack_efficiency, 12);
    expect(stats.pack.padding_tokens).toBe(tr.padding_tokens);
    expect(stats.pack.too_long).toBe(tr.dropped_too_long);
    expect(stats.pack.too_long).toBeGreaterThan(0);
    expect(stats.rejected.counts).toEqual(m.rejected);
    expect(stats.samples).toBe(
      tr.samples +
        tr.dropped_too_long +
        (m.splits.validation?.samples ?? 0) +
        (m.splits.validation?.dropped_too_long ?? 0),
    );
  });

  it("skip and drop reasons come with examples", () => {
    expect(stats.report.skippedByReason.invalid_json.count).toBe(1);
    expect(stats.report.skippedByReason.invalid_json.examples[0].source).toBe(`${bad}:2`);
    expect(stats.report.stages.dedup).toEqual({ exact: 1 });
    expect(stats.report.skipped).toBe(2);
    expect(stats.rejected.counts).toEqual({ CONTENT_HAS_END_OF_TURN: 1 });
    expect(stats.rejected.examples[0].source).toBe(`${bad}:5`);

    expect(text).toContain("skipped and dropped:");
    expect(text).toMatch(/\[invalid_json\] 1 records skipped while reading\n {6}\S*bad\.jsonl:2/);
    expect(text).toContain("dedup: exact 1");
    expect(text).toMatch(
      /\[CONTENT_HAS_END_OF_TURN\] 1 conversations .*\n {6}\S*bad\.jsonl:5: assistant turn \(message 1\)/,
    );
    expect(text).toMatch(
      /train samples longer than 1,024 dropped \(pack.over_length: drop\), e\.g\. examples\/payment-support\/tools\.jsonl:\d+ \(\d+ tokens\)/,
    );
  });

  it("prints the histogram as unicode bars whose counts sum to the sample count", () => {
    const rows = [...text.matchAll(/^ +(\S+–\S+|> \S+) │([█▉▊▋▌▍▎▏]*) +(\d[\d,]*)$/gm)];
    expect(rows).toHaveLength(6);
    const counts = rows.map((r) => Number(r[3].replace(/,/g, "")));
    expect(counts).toEqual(stats.length_histogram.map((h) => h.count));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(stats.samples);
    // The longest bar is the largest count (40 cells); an empty bucket has none.
    const biggest = counts.indexOf(Math.max(...counts));
    expect(rows[biggest][2]).toBe("█".repeat(40));
    rows.forEach((r, i) => {
      expect(r[2] === "").toBe(counts[i] === 0);
    });
    expect(text).toMatch(/packing at max_length 1,024: \d+ packs, \d+\.\d% full/);
    expect(text).toMatch(/samples by thinking mode: on \d+, off \d+/);
  });
});
