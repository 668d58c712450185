// Worker thread of tokenizeConversations: loads the chat template and tokenizer once, then turns each batch of
// conversations into tokenized samples (render + tokenize + mask) and sends the arrays back transferred.
import { parentPort, workerData } from "node:worker_threads";
import type { Conversation } from "../../data/conversation.ts";
import type { LossPolicy } from "../../template/index.ts";
import { collectGarbage, OldSpaceCap } from "./gc.ts";
import { encodeBatch } from "./records.ts";
import {
  errorData,
  loadSampleContext,
  newRejections,
  type TokenizedConvSample,
  tokenizeConversation,
} from "./samples.ts";

const port = parentPort!;

function transferOf(out: TokenizedConvSample[][]): ArrayBuffer[] {
  const transfer: ArrayBuffer[] = [];
  for (const samples of out)
    for (const s of samples) transfer.push(s.ids.buffer as ArrayBuffer, s.lossWeight.buffer as ArrayBuffer);
  return transfer;
}
// A worker's live old + large-object space is ≈ 30–45 MB (tokenizer, template, word cache); collect past 64 MB.
const cap = new OldSpaceCap(64 * 2 ** 20);
const { modelDir, policy } = workerData as { modelDir: string; policy: LossPolicy };

try {
  const ctx = await loadSampleContext(modelDir, policy);
  // Parsing tokenizer.json left ~60 MB of garbage in this thread's heap (see gc.ts).
  collectGarbage();
  port.on("message", (m: { convs: Conversation[]; strict: boolean; records?: boolean }) => {
    try {
      if (m.records) {
        // Tokenizing ahead (stream.ts): each conversation's spill record or its TunaError, for the caller to replay
        // in its own order; any other error fails the batch.
        const r = encodeBatch(m.convs, ctx);
        cap.check();
        port.postMessage(r, [r.bytes.buffer as ArrayBuffer, r.sizes.buffer as ArrayBuffer]);
        return;
      }
      const rej = newRejections();
      const out: TokenizedConvSample[][] = m.convs.map((c) => tokenizeConversation(c, ctx, m.strict, rej));
      port.postMessage({ out, rej }, transferOf(out));
    } catch (e) {
      port.postMessage({ error: errorData(e) });
    }
  });
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ error: errorData(e) });
}
