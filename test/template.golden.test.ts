// Golden test: Tuna's rendering of the real Qwen3 chat template is byte-identical to transformers'
// apply_chat_template(..., tokenize=False) for every case × generation prompt on/off × thinking unset/off/on.
import { beforeAll, describe, expect, it } from "vitest";
import { loadChatTemplate } from "../src/template/load.ts";
import { renderChat, type TemplateMessage, toTemplateMessages } from "../src/template/render.ts";
import { CONVERSATIONS, RAW } from "./fixtures/template/cases.ts";
import { QWEN3_DIR, type ReferenceRender, reference } from "./fixtures/template/reference.ts";

interface Case {
  name: string;
  messages: TemplateMessage[];
  tools?: unknown[];
  addGenerationPrompt: boolean;
  enableThinking?: boolean;
}

const cases: Case[] = [];
for (const base of [
  ...CONVERSATIONS.map((c) => ({ name: c.source, messages: toTemplateMessages(c.messages), tools: c.tools })),
  ...RAW,
]) {
  for (const addGenerationPrompt of [false, true]) {
    for (const enableThinking of [undefined, false, true]) {
      cases.push({ ...base, addGenerationPrompt, enableThinking });
    }
  }
}

describe("renderChat matches transformers apply_chat_template (Qwen3)", () => {
  const template = loadChatTemplate(QWEN3_DIR);
  let expected: (string | { error: string })[];

  beforeAll(() => {
    const renders: ReferenceRender[] = cases.map((c) => ({
      messages: c.messages,
      tools: c.tools ?? null,
      add_generation_prompt: c.addGenerationPrompt,
      enable_thinking: c.enableThinking ?? null,
    }));
    expected = reference({ renders }).renders;
  });

  it("has enough cases", () => {
    expect(cases.length).toBeGreaterThanOrEqual(20 * 6);
  });

  it.each(
    cases.map((c, i) => [`${c.name} gen=${c.addGenerationPrompt} think=${c.enableThinking}`, i] as const),
  )("%s", (_name, i) => {
    const c = cases[i];
    const want = expected[i];
    if (typeof want !== "string") throw new Error(`reference failed: ${want.error}`);
    const got = renderChat(template, c.messages, {
      addGenerationPrompt: c.addGenerationPrompt,
      enableThinking: c.enableThinking,
      tools: c.tools,
    });
    expect(got).toBe(want);
  });
});
