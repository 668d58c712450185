// Worker thread of a TokenizerPool: loads the tokenizer once, then encodes each batch it is sent.
import { parentPort, workerData } from "node:worker_threads";
import { isTunaError } from "../errors.ts";
import { loadTokenizer } from "./index.ts";

const port = parentPort!;
const errorOf = (e: unknown) =>
  isTunaError(e)
    ? { code: e.code, message: e.message, hint: e.hint }
    : { code: "TOKENIZER_POOL", message: String(e) };

try {
  const tok = await loadTokenizer((workerData as { modelDir: string }).modelDir);
  port.on("message", (m: { texts: string[]; splitSpecial: boolean }) => {
    try {
      const ids = m.texts.map((t) => tok.encode(t, { splitSpecial: m.splitSpecial }));
      port.postMessage(
        { ids },
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
