// Worker thread of tokenizeConversations: loads the chat template and tokenizer once, then turns each batch of
// conversations into tokenized samples (render + tokenize + mask) and sends the arrays back transferred.
import { parentPort, workerData } from "node:worker_threads";
import type { Conversation } from "../../data/conversation.ts";
import { isTunaError } from "../../errors.ts";
import type { LossPolicy } from "../../template/index.ts";
import {
  type ErrorData,
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
const { modelDir, policy } = workerData as { modelDir: string; policy: LossPolicy };

try {
  const ctx = await loadSampleContext(modelDir, policy);
  port.on("message", (m: { convs: Conversation[]; strict: boolean; perConversation?: boolean }) => {
    try {
      if (m.perConversation) {
        // Tokenizing ahead (stream.ts): each conversation's samples or its TunaError, for the caller to replay in
        // its own order; any other error fails the batch.
        const errors: (ErrorData | null)[] = [];
        const out: TokenizedConvSample[][] = m.convs.map((c) => {
          try {
            errors.push(null);
            return tokenizeConversation(c, ctx, true, newRejections());
          } catch (e) {
            if (!isTunaError(e)) throw e;
            errors[errors.length - 1] = errorData(e);
            return [];
          }
        });
        port.postMessage({ out, errors }, transferOf(out));
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
