// The machine's own ceiling for two threads: a pure-CPU loop (FNV hashing into a 256 KB table) run by one worker,
// then split over two, six rounds. What the tokenizer pool (pool-check.mjs) can hope for on this box.
//   node bench/tokenizer/cpu-ceiling.mjs
import { isMainThread, parentPort, Worker } from "node:worker_threads";

function work(n) {
  let h = 2166136261 >>> 0;
  const a = new Uint32Array(1 << 16);
  for (let i = 0; i < n; i++) {
    h = Math.imul(h ^ (i & 255), 16777619) >>> 0;
    a[h & 65535] += h;
  }
  return h + a[7];
}
if (!isMainThread) {
  parentPort.on("message", (n) => parentPort.postMessage(work(n)));
} else {
  const N = 4e8;
  const ws = [0, 1].map(() => new Worker(new URL(import.meta.url)));
  const run = (w, n) =>
    new Promise((r) => {
      w.once("message", r);
      w.postMessage(n);
    });
  await Promise.all(ws.map((w) => run(w, 1e7)));
  const ratios = [];
  for (let round = 0; round < 6; round++) {
    let t = performance.now();
    await run(ws[0], N);
    const one = performance.now() - t;
    t = performance.now();
    await Promise.all(ws.map((w) => run(w, N / 2)));
    const two = performance.now() - t;
    ratios.push(one / two);
    console.log(`1 worker ${one.toFixed(0)} ms, 2 workers ${two.toFixed(0)} ms: ${(one / two).toFixed(2)}x`);
  }
  ratios.sort((a, b) => a - b);
  console.log("median", ratios[3].toFixed(2));
  process.exit(0);
}
