// Worker thread of tokenizeConversations: loads the chat template and tokenizer once, then turns each batch of
// conversations into tokenized samples (render + tokenize + mask) and sends the arrays back transferred.
import { parentPort, workerData } from "node:worker_threads";
import type { Conversation } from "../../data/conversation.ts";
import type { LossPolicy } from "../../template/index.ts";
import {
  errorData,
  loadSampleContext,
  newRejections,
  type TokenizedConvSample,
  tokenizeConversation,
} from "./samples.ts";

const port = parentPort!;
const { modelDir, policy } = workerData as { modelDir: string; policy: LossPolicy };

try {
  const ctx = await loadSampleContext(modelDir, policy);
  port.on("message", (m: { convs: Conversation[]; strict: boolean }) => {
    try {
      const rej = newRejections();
      const out: TokenizedConvSample[][] = m.convs.map((c) => tokenizeConversation(c, ctx, m.strict, rej));
      const transfer: ArrayBuffer[] = [];
      for (const samples of out)
        for (const s of samples)
          transfer.push(s.ids.buffer as ArrayBuffer, s.lossWeight.buffer as ArrayBuffer);
      port.postMessage({ out, rej }, transfer);
    } catch (e) {
      port.postMessage({ error: errorData(e) });
    }
  });
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ error: errorData(e) });
}
