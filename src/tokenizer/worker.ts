// Worker thread of a TokenizerPool: loads the tokenizer once, then encodes each batch it is sent. Each answer says
// how long the encoding took (wall and this thread's CPU time), for the pool's stats.
import { readFileSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { isTunaError } from "../errors.ts";
import { loadTokenizer } from "./index.ts";

const port = parentPort!;
const errorOf = (e: unknown) =>
  isTunaError(e)
    ? { code: e.code, message: e.message, hint: e.hint }
    : { code: "TOKENIZER_POOL", message: String(e) };

/** This thread's CPU time in ms (Linux /proc, 10 ms ticks; NaN elsewhere): Node 20 has no per-thread counter. */
function threadCpuMs(): number {
  try {
    const stat = readFileSync("/proc/thread-self/stat", "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 10; // utime + stime, in USER_HZ = 100 ticks a second
  } catch {
    return Number.NaN;
  }
}

try {
  const tok = await loadTokenizer((workerData as { modelDir: string }).modelDir);
  port.on("message", (m: { texts: string[]; splitSpecial: boolean; stats?: boolean }) => {
    try {
      const t0 = performance.now();
      const c0 = m.stats ? threadCpuMs() : 0;
      const ids = m.texts.map((t) => tok.encode(t, { splitSpecial: m.splitSpecial }));
      const busyMs = performance.now() - t0;
      const cpuMs = m.stats ? threadCpuMs() - c0 : Number.NaN;
      port.postMessage(
        { ids, busyMs, cpuMs, doneAt: performance.timeOrigin + performance.now() },
        ids.map((a) => a.buffer as ArrayBuffer),
      );
    } catch (e) {
      port.postMessage({ error: errorOf(e) });
    }
  });
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ error: errorOf(e) });
}
