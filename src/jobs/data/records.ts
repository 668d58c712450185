// A conversation's tokenized samples as one byte record, for the spill file that holds them between tokenizing
// (in reading order, on worker threads) and writing shards (in the mix's order). One record a conversation, read
// back with one positioned read; all fields 4-byte aligned from the record's start:
//
//   u32 samples, u32 sourceBytes, samples × (u32 length, u32 thinking),
//   samples × (i32 ids[length], f32 lossWeight[length]), source (UTF-8)
//
// A conversation the template rejects has no record: its error (with the source) stays in memory, and is replayed
// where the mix puts it.
import type { Conversation } from "../../data/conversation.ts";
import { isTunaError } from "../../errors.ts";
import {
  type ErrorData,
  errorData,
  newRejections,
  type SampleContext,
  type TokenizedConvSample,
  tokenizeConversation,
} from "./samples.ts";

export interface EncodedBatch {
  /** The records of the batch's conversations, back to back (a rejected conversation has none). */
  bytes: Uint8Array;
  /** Bytes of each conversation's record (0 for a rejected one). */
  sizes: Int32Array;
  /** Each conversation's TunaError from rendering or masking, or null. */
  errors: (ErrorData | null)[];
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Tokenize a batch (each conversation on its own, errors kept per conversation) into spill records. */
export function encodeBatch(
  convs: readonly Conversation[],
  ctx: Omit<SampleContext, "modelDir">,
): EncodedBatch {
  const parts: { samples: TokenizedConvSample[]; source: Uint8Array }[] = [];
  const sizes = new Int32Array(convs.length);
  const errors: (ErrorData | null)[] = [];
  let total = 0;
  convs.forEach((c, k) => {
    let samples: TokenizedConvSample[];
    try {
      samples = tokenizeConversation(c, ctx, true, newRejections());
    } catch (e) {
      if (!isTunaError(e)) throw e;
      errors.push(errorData(e));
      parts.push({ samples: [], source: new Uint8Array(0) });
      return;
    }
    errors.push(null);
    const source = utf8.encode(c.source);
    let size = 8 + 8 * samples.length + source.length;
    for (const s of samples) size += 8 * s.ids.length;
    parts.push({ samples, source });
    sizes[k] = size;
    total += size;
  });
  const bytes = new Uint8Array(total);
  const buf = bytes.buffer;
  let at = 0;
  convs.forEach((_, k) => {
    if (errors[k]) return;
    const { samples, source } = parts[k];
    // Records are back to back (not aligned in `bytes`); each is read back into a buffer of its own, so only the
    // offsets inside a record need to be multiples of 4.
    const v = new DataView(buf, at);
    v.setUint32(0, samples.length, true);
    v.setUint32(4, source.length, true);
    samples.forEach((s, i) => {
      v.setUint32(8 + 8 * i, s.ids.length, true);
      v.setUint32(12 + 8 * i, s.thinking ? 1 : 0, true);
    });
    let o = at + 8 + 8 * samples.length;
    for (const s of samples) {
      bytes.set(new Uint8Array(s.ids.buffer, s.ids.byteOffset, s.ids.byteLength), o);
      o += s.ids.byteLength;
      bytes.set(new Uint8Array(s.lossWeight.buffer, s.lossWeight.byteOffset, s.lossWeight.byteLength), o);
      o += s.lossWeight.byteLength;
    }
    bytes.set(source, o);
    at += sizes[k];
  });
  return { bytes, sizes, errors };
}

/** The samples of one record (`record` must start at offset 0 of its own ArrayBuffer: the views are aligned). */
export function decodeRecord(record: Uint8Array): TokenizedConvSample[] {
  const buf = record.buffer;
  const head = new Uint32Array(buf, record.byteOffset, 2);
  const n = head[0];
  const meta = new Uint32Array(buf, record.byteOffset + 8, 2 * n);
  let o = record.byteOffset + 8 + 8 * n;
  const raw: { ids: Int32Array; lossWeight: Float32Array; thinking: boolean }[] = [];
  for (let i = 0; i < n; i++) {
    const len = meta[2 * i];
    const ids = new Int32Array(buf, o, len);
    const lossWeight = new Float32Array(buf, o + 4 * len, len);
    o += 8 * len;
    raw.push({ ids, lossWeight, thinking: meta[2 * i + 1] === 1 });
  }
  const source = fromUtf8.decode(new Uint8Array(buf, o, head[1]));
  return raw.map((s) => ({ ...s, source }));
}
