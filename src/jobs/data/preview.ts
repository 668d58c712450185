// `tuna data preview`: a few samples exactly as training sees them — rendered with the model's own chat template,
// tokenized, masked — with the trained tokens marked. The marks come from the loss weights (token offsets of the
// tokens whose weight is 1), not from the template's character spans, so what is shown is what is trained.
import type { RunConfig } from "../../config/schema.ts";
import type { Conversation } from "../../data/conversation.ts";
import { Rng } from "../../data/mix.ts";
import { prepareConversations, sourceName } from "../../data/prepare.ts";
import { TunaError } from "../../errors.ts";
import { buildSamples, tokenizeSample } from "../../template/index.ts";
import { errorData, type SampleContext, tokenCounter } from "./samples.ts";

export interface PreviewSample {
  source: string;
  thinking: boolean;
  /** Assistant message indices this sample trains. */
  turns: number[];
  text: string;
  tokens: number;
  trained_tokens: number;
  /** [start, end) character ranges of `text` covered by trained tokens, merged where adjacent. */
  trained: [number, number][];
}

export interface PreviewRejected {
  source: string;
  code: string;
  message: string;
}

export interface PreviewOptions {
  n: number;
  /** Only this source (by its `name`, or its path when it has none). */
  source?: string;
  /** Seed of the choice; default the data seed. */
  seed?: string | number;
}

/** N samples drawn (seeded) from the conversations a run would train on (train and validation splits). */
export async function previewSamples(
  config: RunConfig,
  ctx: SampleContext,
  o: PreviewOptions,
): Promise<{ samples: PreviewSample[]; rejected: PreviewRejected[]; conversations: number }> {
  let data = config.data;
  if (o.source !== undefined) {
    const names = data.sources.map(sourceName);
    const i = names.indexOf(o.source);
    if (i < 0) {
      throw new TunaError("CLI_ARGS", `--source: no source named "${o.source}"`, {
        hint: `the config's sources are: ${names.map((n) => JSON.stringify(n)).join(", ")}`,
      });
    }
    // One source alone: its own ratio means nothing without the others.
    data = {
      ...data,
      sources: [{ ...data.sources[i], name: names[i], ratio: undefined, weight: undefined }],
    };
  }
  const prepared = await prepareConversations(data, { countTokens: tokenCounter(ctx) });
  const pool: Conversation[] = [...prepared.train, ...prepared.validation];
  // A stable order first (mixing shuffles), so the seed alone decides the choice.
  pool.sort((a, b) => (a.source < b.source ? -1 : a.source > b.source ? 1 : 0));
  new Rng(String(o.seed ?? data.seed)).shuffle(pool);

  const samples: PreviewSample[] = [];
  const rejected: PreviewRejected[] = [];
  for (const conv of pool) {
    if (samples.length >= o.n) break;
    let built: ReturnType<typeof buildSamples>;
    try {
      built = buildSamples(conv, ctx.template, ctx.policy);
      for (const s of built) tokenizeSample(ctx.tokenizer, s); // mask errors show here, as in training
    } catch (e) {
      const d = errorData(e);
      if (d.code === "INTERNAL") throw e;
      rejected.push({ source: conv.source, code: d.code, message: d.message });
      continue;
    }
    for (const s of built) {
      if (samples.length >= o.n) break;
      const { lossWeight } = tokenizeSample(ctx.tokenizer, s);
      const { offsets } = ctx.tokenizer.encodeWithOffsets(s.text);
      const trained: [number, number][] = [];
      let count = 0;
      for (let t = 1; t < lossWeight.length; t++) {
        if (lossWeight[t] === 0) continue;
        count++;
        const a = offsets[2 * t];
        const b = offsets[2 * t + 1];
        const last = trained.at(-1);
        // Adjacent tokens touch; two tokens made of one character's bytes share its span.
        if (last && a <= last[1]) last[1] = Math.max(last[1], b);
        else trained.push([a, b]);
      }
      samples.push({
        source: s.source,
        thinking: s.thinking,
        turns: s.turns,
        text: s.text,
        tokens: lossWeight.length,
        trained_tokens: count,
        trained,
      });
    }
  }
  return { samples, rejected, conversations: pool.length };
}

// ---- terminal rendering ----

export const OPEN = "⟦";
export const CLOSE = "⟧";
const SPECIAL = /<\|[a-z_]+\|>|<\/?think>|<\/?tool_call>|<\/?tool_response>/g;
const C = { trained: "\x1b[32m", special: "\x1b[1;35m", dim: "\x1b[2m", reset: "\x1b[0m" };

/** The sample text with trained ranges marked: ANSI colour, or ⟦…⟧ brackets when `color` is false. */
export function markTrained(text: string, trained: [number, number][], color: boolean): string {
  let out = "";
  let at = 0;
  const plain = (s: string) => (color ? s.replace(SPECIAL, (m) => `${C.special}${m}${C.reset}`) : s);
  const inTrained = (s: string) =>
    color
      ? `${C.trained}${s.replace(SPECIAL, (m) => `${C.special}${m}${C.reset}${C.trained}`)}${C.reset}`
      : `${OPEN}${s}${CLOSE}`;
  for (const [a, b] of trained) {
    out += plain(text.slice(at, a)) + inTrained(text.slice(a, b));
    at = b;
  }
  return out + plain(text.slice(at));
}

export function formatPreview(r: Awaited<ReturnType<typeof previewSamples>>, color: boolean): string {
  const L: string[] = [];
  const legend = color
    ? `${C.trained}trained tokens in green${C.reset}, ${C.special}special tokens${C.reset}`
    : `trained tokens between ${OPEN} and ${CLOSE}`;
  L.push(`${r.samples.length} samples from ${r.conversations} conversations; ${legend}`);
  r.samples.forEach((s, i) => {
    const head = `── sample ${i + 1}/${r.samples.length} · ${s.source} · thinking ${s.thinking ? "on" : "off"} · ${s.tokens} tokens, ${s.trained_tokens} trained (${((100 * s.trained_tokens) / s.tokens).toFixed(1)}%) · trains assistant message${s.turns.length > 1 ? "s" : ""} ${s.turns.join(", ")}`;
    L.push("", color ? `${C.dim}${head}${C.reset}` : head);
    L.push(markTrained(s.text, s.trained, color));
  });
  for (const x of r.rejected) L.push("", `── skipped ${x.source} [${x.code}]: ${x.message.split("\n")[0]}`);
  return L.join("\n");
}
