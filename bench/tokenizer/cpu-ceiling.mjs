// The machine's own ceiling for two threads: a pure-CPU loop (FNV hashing into a 256 KB table) run by one worker,
// then split over two, six rounds. What the tokenizer pool (pool-check.mjs) can hope for on this box. Two splits:
// "static" gives each worker half the loop; "shared" cuts it into 256 pieces that the workers take from a shared
// counter as they come free (like the pool's work stealing), so a worker that runs slower for a while does less.
//   node bench/tokenizer/cpu-ceiling.mjs [--rounds 6] [--n 4e8]
// pool-check.mjs --ceiling imports ceilingWorkers() and runs a ceiling round next to each tokenizer round.
import { isMainThread, parentPort, Worker } from "node:worker_threads";

// `a`: one table a message, not one a call: the shared split calls work() 256 times a round, and a fresh 256 KB
// array each time (mmap, page faults, GC) would be work the static split does not do.
function work(n, a) {
  let h = 2166136261 >>> 0;
  for (let i = 0; i < n; i++) {
    h = Math.imul(h ^ (i & 255), 16777619) >>> 0;
    a[h & 65535] += h;
  }
  return h + a[7];
}

// Throughput-bound instead of latency-bound: four independent multiply chains keep the core's multiplier busy every
// cycle. The hash loop above waits on one chain's latency, which two hyperthreads of one physical core hide for each
// other (it reads ~2x there too); this one gets ~2x from two vCPUs only when they are two physical cores (about 1x on
// one core's two hyperthreads), so a round where it reads low is one where the host ran our vCPUs on one core.
function ilp(n) {
  let a = 1;
  let b = 2;
  let c = 3;
  let d = 4;
  for (let i = 0; i < n; i++) {
    a = (Math.imul(a, 16777619) + i) | 0;
    b = (Math.imul(b, 16777619) + i) | 0;
    c = (Math.imul(c, 16777619) + i) | 0;
    d = (Math.imul(d, 16777619) + i) | 0;
  }
  return a ^ b ^ c ^ d;
}

if (!isMainThread && parentPort) {
  parentPort.on("message", (m) => {
    const a = new Uint32Array(1 << 16);
    if (typeof m === "number") return parentPort.postMessage(work(m, a));
    if (m.ilp) return parentPort.postMessage(ilp(m.ilp));
    // Shared: take pieces of m.piece iterations until m.pieces are taken.
    const next = new Int32Array(m.sab);
    let h = 0;
    while (Atomics.add(next, 0, 1) < m.pieces) h += work(m.piece, a);
    parentPort.postMessage(h);
  });
}

/** Two ceiling workers; round(n) times n iterations on one worker, then split over both (static and shared). */
export async function ceilingWorkers() {
  const ws = [0, 1].map(() => new Worker(new URL(import.meta.url)));
  const run = (w, m) =>
    new Promise((r) => {
      w.once("message", r);
      w.postMessage(m);
    });
  await Promise.all(ws.map((w) => run(w, 1e7)));
  for (let k = 0; k < 3; k++) await Promise.all(ws.map((w) => run(w, { ilp: 1e7 })));
  const time = async (f) => {
    const t = performance.now();
    await f();
    return performance.now() - t;
  };
  return {
    async round(n) {
      const one = await time(() => run(ws[0], n));
      const half = await time(() => Promise.all(ws.map((w) => run(w, n / 2))));
      const sab = new SharedArrayBuffer(4);
      const shared = await time(() =>
        Promise.all(ws.map((w) => run(w, { sab, pieces: 256, piece: n / 256 }))),
      );
      const ilpOne = await time(() => run(ws[0], { ilp: n / 4 }));
      const ilpHalf = await time(() => Promise.all(ws.map((w) => run(w, { ilp: n / 8 }))));
      return { one, static: one / half, shared: one / shared, ilp: ilpOne / ilpHalf };
    },
    close: () => Promise.all(ws.map((w) => w.terminate())),
  };
}

if (isMainThread && process.argv[1] === new URL(import.meta.url).pathname) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? Number(process.argv[i + 1]) : dflt;
  };
  const rounds = arg("--rounds", 6);
  const n = arg("--n", 4e8);
  const c = await ceilingWorkers();
  const rows = [];
  for (let r = 0; r < rounds; r++) {
    const x = await c.round(n);
    rows.push(x);
    console.log(
      `1 worker ${x.one.toFixed(0)} ms; 2 workers: static ${x.static.toFixed(2)}x, shared ${x.shared.toFixed(2)}x, ` +
        `multiplier-bound ${x.ilp.toFixed(2)}x`,
    );
  }
  const med = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
  console.log(
    `median static ${med(rows.map((x) => x.static)).toFixed(2)}x, shared ${med(rows.map((x) => x.shared)).toFixed(2)}x, ` +
      `multiplier-bound ${med(rows.map((x) => x.ilp)).toFixed(2)}x`,
  );
  await c.close();
}
