// Near-duplicate detection cost per conversation, one thread: Deduplicator.check over FineTome-like
// conversations (bench/prepare/generate.ts) with near dedup on and off, same conversations, best of `passes`,
// in CPU time of this process (steadier than wall time on a shared box) and wall time. The difference is what
// MinHash + LSH add to reading (the main thread's critical path in bench/prepare).
//   npx tsx bench/data/near-dedup.ts [--n 5000] [--passes 3] [--clean <other clean.ts, e.g. an older copy>]
import { resolve } from "node:path";
import type { Conversation } from "../../src/data/conversation.ts";
import { fineTomeRecord } from "../prepare/generate.ts";

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const n = Number(opt("--n") ?? 5000);
const passes = Number(opt("--passes") ?? 3);
const { Deduplicator } = (await import(
  opt("--clean") ? resolve(opt("--clean") as string) : "../../src/data/clean.ts"
)) as typeof import("../../src/data/clean.ts");

const convs: Conversation[] = [];
let chars = 0;
for (let i = 0; i < n; i++) {
  const r = fineTomeRecord(i, 0) as { conversations: { from: string; value: string }[] };
  const messages = r.conversations.map((m) => ({
    role:
      m.from === "human"
        ? ("user" as const)
        : m.from === "gpt"
          ? ("assistant" as const)
          : ("system" as const),
    content: m.value,
  }));
  for (const m of messages) chars += m.content.length;
  convs.push({ source: `gen:${i + 1}`, messages });
}

function time(near: boolean): { ms: number; cpu: number; dropped: number } {
  let best = Number.POSITIVE_INFINITY;
  let bestCpu = Number.POSITIVE_INFINITY;
  let dropped = 0;
  for (let p = 0; p < passes; p++) {
    const d = new Deduplicator({ exact: true, near });
    const t = performance.now();
    const c0 = process.cpuUsage();
    dropped = 0;
    for (const c of convs) if (d.check(c) !== "new") dropped++;
    (d as { close?: () => void }).close?.(); // older clean.ts copies have no close()
    const c1 = process.cpuUsage(c0);
    best = Math.min(best, performance.now() - t);
    bestCpu = Math.min(bestCpu, (c1.user + c1.system) / 1000);
  }
  return { ms: best, cpu: bestCpu, dropped };
}

const off = time(false);
const on = time(true);
const per = (a: number, b: number) => ((a - b) / n).toFixed(3);
process.stdout.write(
  `${n} conversations (${(chars / n).toFixed(0)} chars each): exact only ${off.cpu.toFixed(0)} CPU-ms ` +
    `(${off.ms.toFixed(0)} ms wall), exact + near ${on.cpu.toFixed(0)} CPU-ms (${on.ms.toFixed(0)} ms wall; ` +
    `${on.dropped} dropped) → near dedup ${per(on.cpu, off.cpu)} CPU-ms a conversation (${per(on.ms, off.ms)} ms wall)\n`,
);
