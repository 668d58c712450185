// One conversation → its tokenized training samples, the step shared by `tuna train` (shards), `tuna data stats`
// and `tuna data preview`: buildSamples with the model's own template, then tokenize + mask. A conversation the
// template cannot render or mask exactly is a rejection, counted by reason with its `file:line` (or, strict,
// thrown); nothing is dropped silently.
import type { RunConfig } from "../../config/schema.ts";
import type { Conversation } from "../../data/conversation.ts";
import { isTunaError, TunaError } from "../../errors.ts";
import {
  buildSamples,
  type ChatTemplate,
  type LossPolicy,
  loadChatTemplate,
  tokenizeSample,
} from "../../template/index.ts";
import { loadTokenizer } from "../../tokenizer/index.ts";
import type { Tokenizer } from "../../tokenizer/types.ts";

export interface SampleContext {
  modelDir: string;
  template: ChatTemplate;
  tokenizer: Tokenizer;
  policy: LossPolicy;
}

export function lossPolicy(config: Pick<RunConfig, "template">): LossPolicy {
  return { turns: config.template.loss_on, thinking: config.template.thinking };
}

export async function loadSampleContext(modelDir: string, policy: LossPolicy): Promise<SampleContext> {
  return { modelDir, template: loadChatTemplate(modelDir), tokenizer: await loadTokenizer(modelDir), policy };
}

export interface TokenizedConvSample {
  ids: Int32Array;
  lossWeight: Float32Array;
  source: string;
  thinking: boolean;
}

/** Conversations the template could not render or mask, by reason code, with the first few examples. */
export interface Rejections {
  counts: Record<string, number>;
  examples: { code: string; source: string; message: string }[];
}

export const newRejections = (): Rejections => ({ counts: {}, examples: [] });

/** Count a rejection; keeps up to `maxExamples` examples per code. */
export function reject(
  rej: Rejections,
  code: string,
  source: string,
  message: string,
  maxExamples = 5,
): void {
  rej.counts[code] = (rej.counts[code] ?? 0) + 1;
  if (rej.examples.filter((x) => x.code === code).length < maxExamples)
    rej.examples.push({ code, source, message });
}

/** Merge `from` into `into` (worker results). */
export function mergeRejections(into: Rejections, from: Rejections, maxExamples = 5): void {
  for (const [code, n] of Object.entries(from.counts)) into.counts[code] = (into.counts[code] ?? 0) + n;
  for (const ex of from.examples) {
    if (into.examples.filter((x) => x.code === ex.code).length < maxExamples) into.examples.push(ex);
  }
}

/** The counter prepareConversations uses for token filters and mixing by tokens. */
/**
 * Tokens of one conversation, for mixing by tokens. A conversation the template rejects counts 0 here: the
 * tokenizing pass that follows rejects it again and counts it under its reason (or throws, with `strict`).
 */
export function tokenCounter(ctx: SampleContext): (conv: Conversation) => number {
  return (conv) => {
    try {
      return buildSamples(conv, ctx.template, ctx.policy).reduce(
        (a, s) => a + ctx.tokenizer.encode(s.text).length,
        0,
      );
    } catch (e) {
      if (isTunaError(e)) return 0;
      throw e;
    }
  };
}

/**
 * The tokenized samples of one conversation. A TunaError from rendering or masking is counted in `rej` and gives
 * no samples, unless `strict`, where it is thrown.
 */
export function tokenizeConversation(
  conv: Conversation,
  ctx: Omit<SampleContext, "modelDir">,
  strict: boolean,
  rej: Rejections,
): TokenizedConvSample[] {
  try {
    return buildSamples(conv, ctx.template, ctx.policy).map((s) => ({
      ...tokenizeSample(ctx.tokenizer, s),
      source: s.source,
      thinking: s.thinking,
    }));
  } catch (e) {
    if (!isTunaError(e) || strict) throw e;
    reject(rej, e.code, conv.source, errorData(e).message);
    return [];
  }
}

/** A TunaError as plain data (crosses a worker boundary), and back. */
export interface ErrorData {
  code: string;
  message: string;
  where?: string;
  hint?: string;
}

export function errorData(e: unknown): ErrorData {
  if (isTunaError(e)) {
    const prefix = e.where ? `${e.where}: ` : "";
    return {
      code: e.code,
      message: e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message,
      where: e.where,
      hint: e.hint,
    };
  }
  return { code: "INTERNAL", message: e instanceof Error ? (e.stack ?? e.message) : String(e) };
}

export const errorFromData = (d: ErrorData): TunaError =>
  new TunaError(d.code, d.message, { where: d.where, hint: d.hint });
