// Worker thread of a TokenizerPool: loads the tokenizer once, then for each shared batch (share.ts) runs jobs until
// none are left and answers once, with every id it made in one transferred Int32Array.
import { parentPort, workerData } from "node:worker_threads";
import { loadTokenizer } from "./load.ts";
import { errorOf, runShare, type SharedBatch } from "./share.ts";

const port = parentPort!;

try {
  const tok = await loadTokenizer((workerData as { modelDir: string }).modelDir);
  port.on("message", (m: { batch: SharedBatch; self: number; splitSpecial: boolean; stats: boolean }) => {
    try {
      const part = runShare(tok, m.batch, m.self, m.splitSpecial, m.stats);
      port.postMessage({ part }, [part.ids.buffer, part.jobs.buffer, part.lens.buffer] as ArrayBuffer[]);
    } catch (e) {
      port.postMessage({ error: errorOf(e) });
    }
  });
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ error: errorOf(e) });
}
