// The masking invariant, checked against Hugging Face transformers and tokenizers (the reference):
// for every sample and every trained turn i,
//   - the tokens before the trained span are exactly encode(apply_chat_template(history, add_generation_prompt=True))
//   - the trained tokens decode to exactly the text transformers renders for the turn after that prompt, through
//     <|im_end|>, and are the same ids transformers' tokenizer gives the full rendering there
//   - the only untrained text after the last span is the template's "\n"
//   - loss weights are 1 exactly on trained tokens, 0 on the first token
import { beforeAll, describe, expect, it } from "vitest";
import type { Conversation } from "../src/data/conversation.ts";
import {
  buildSamples,
  loadChatTemplate,
  type Sample,
  tokenizeSample,
  toTemplateMessages,
} from "../src/template/index.ts";
import { loadTokenizer, type Tokenizer } from "../src/tokenizer/index.ts";
import { CONVERSATIONS } from "./fixtures/template/cases.ts";
import {
  QWEN3_DIR,
  type ReferenceRender,
  type ReferenceResult,
  reference,
} from "./fixtures/template/reference.ts";

const EOT = "<|im_end|>";
const template = loadChatTemplate(QWEN3_DIR);

interface Run {
  name: string;
  conv: Conversation;
  samples: Sample[];
  /** assistant message index → [render index of prompt, render index of full] */
  renders: Map<number, [number, number]>;
  /** sample → index into the encode list */
  encodeAt: number[];
}

const hasReasoning = (c: Conversation) => c.messages.some((m) => m.reasoning?.trim());

const runs: Run[] = [];
const renders: ReferenceRender[] = [];
const encode: string[] = [];
for (const base of CONVERSATIONS) {
  for (const thinking of [false, true]) {
    if (!thinking && hasReasoning(base)) continue; // an error case, tested below
    const conv = { ...base, thinking };
    const samples = buildSamples(conv, template, { turns: "all", thinking: "auto" });
    const messages = toTemplateMessages(conv.messages);
    const map = new Map<number, [number, number]>();
    for (const i of samples.flatMap((s) => s.turns)) {
      const common = { tools: conv.tools ?? null, enable_thinking: thinking };
      renders.push({ ...common, messages: messages.slice(0, i), add_generation_prompt: true });
      renders.push({ ...common, messages: messages.slice(0, i + 1), add_generation_prompt: false });
      map.set(i, [renders.length - 2, renders.length - 1]);
    }
    const encodeAt = samples.map((s) => encode.push(s.text) - 1);
    runs.push({ name: `${base.source} thinking=${thinking}`, conv, samples, renders: map, encodeAt });
  }
}

/** [start, end) runs of weight 1. */
function trainedRuns(w: Float32Array): [number, number][] {
  const out: [number, number][] = [];
  for (let t = 0; t < w.length; t++) {
    if (w[t] !== 0 && w[t] !== 1) throw new Error(`weight ${w[t]} at ${t}`);
    if (w[t] === 1 && (t === 0 || w[t - 1] === 0)) out.push([t, t + 1]);
    else if (w[t] === 1) out[out.length - 1][1] = t + 1;
  }
  return out;
}

describe("training samples of the Qwen3 template match transformers token for token", () => {
  let ref: ReferenceResult;
  let tokenizer: Tokenizer;

  beforeAll(async () => {
    ref = reference({ renders, encode, encode_renders: true });
    tokenizer = await loadTokenizer(QWEN3_DIR);
  });

  it.each(runs.map((r, k) => [r.name, k] as const))("%s", (_name, k) => {
    const run = runs[k];
    for (const [si, sample] of run.samples.entries()) {
      const { ids, lossWeight } = tokenizeSample(tokenizer, sample);
      expect(Array.from(ids)).toEqual(ref.encode[run.encodeAt[si]]);
      expect(lossWeight[0]).toBe(0);
      const spans = trainedRuns(lossWeight);
      expect(spans.length).toBe(sample.turns.length);

      for (const [j, turn] of sample.turns.entries()) {
        const [pi, fi] = run.renders.get(turn)!;
        const prompt = ref.renders[pi] as string;
        const full = ref.renders[fi] as string;
        expect(typeof prompt).toBe("string");
        expect(full.startsWith(prompt)).toBe(true);
        const generated = full.slice(prompt.length, full.indexOf(EOT, prompt.length) + EOT.length);
        const [a, b] = spans[j];
        // prompt tokens are exactly the tokens of render(history, add_generation_prompt=True)
        expect(Array.from(ids.slice(0, a))).toEqual(ref.render_ids[pi]);
        // trained tokens are what the model generates for the turn, through <|im_end|>
        expect(tokenizer.decode(ids.slice(a, b))).toBe(generated);
        const fullIds = ref.render_ids[fi]!;
        expect(Array.from(ids.slice(0, b))).toEqual(fullIds.slice(0, b));
        expect(tokenizer.decode(fullIds.slice(b))).toBe("\n");
        expect(tokenizer.idToToken(ids[b - 1])).toBe(EOT);
      }
      // after the last trained turn only the template's newline remains
      expect(tokenizer.decode(ids.slice(spans.at(-1)![1]))).toBe("\n");
    }
  });

  it("covers every assistant turn of every conversation with policy 'all' (weights aside)", () => {
    for (const run of runs) {
      const want = run.conv.messages.flatMap((m, i) => (m.role === "assistant" && m.weight !== 0 ? [i] : []));
      expect(
        run.samples.flatMap((s) => s.turns).sort((x, y) => x - y),
        run.name,
      ).toEqual(want);
    }
  });
});
