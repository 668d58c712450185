// Loading templates, loss policies, and every error the template room raises, with the real Qwen3 files.
import { createHash } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { Conversation } from "../src/data/conversation.ts";
import { TunaError } from "../src/errors.ts";
import {
  buildSamples,
  compileChatTemplate,
  loadChatTemplate,
  renderChat,
  type Sample,
  tokenizeSample,
} from "../src/template/index.ts";
import { loadTokenizer, type Tokenizer } from "../src/tokenizer/index.ts";
import { QWEN3_DIR, reference } from "./fixtures/template/reference.ts";

const qwen = loadChatTemplate(QWEN3_DIR);
const qwenConfig = JSON.parse(readFileSync(join(QWEN3_DIR, "tokenizer_config.json"), "utf8"));

function tmp(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "tuna-template-"));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

function thrown(f: () => unknown): TunaError {
  try {
    f();
  } catch (e) {
    if (e instanceof TunaError) return e;
    throw e;
  }
  throw new Error("expected a TunaError");
}

const conv = (messages: Conversation["messages"], extra: Partial<Conversation> = {}): Conversation => ({
  messages,
  source: "data/chats.jsonl:7",
  ...extra,
});

describe("loadChatTemplate", () => {
  it("reads the Qwen3 template and special tokens from tokenizer_config.json, hashed with sha256", () => {
    expect(qwen.source).toBe(qwenConfig.chat_template);
    expect(qwen.hash).toBe(createHash("sha256").update(qwenConfig.chat_template).digest("hex"));
    expect(qwen.eosToken).toBe("<|im_end|>");
    expect(qwen.specialTokens).toEqual({ eos_token: "<|im_end|>", pad_token: "<|endoftext|>" });
    expect(qwen.path).toBe(join(QWEN3_DIR, "tokenizer_config.json"));
  });

  it('takes "default" from the list form, and {content} special tokens', () => {
    const dir = tmp({
      "tokenizer_config.json": JSON.stringify({
        chat_template: [
          { name: "tool_use", template: "TOOLS" },
          { name: "default", template: "{{ eos_token }}|{{ bos_token }}" },
        ],
        eos_token: { content: "</s>", lstrip: false },
        bos_token: "<s>",
      }),
    });
    const t = loadChatTemplate(dir);
    expect(t.source).toBe("{{ eos_token }}|{{ bos_token }}");
    expect(renderChat(t, [{ role: "user", content: "x" }])).toBe("</s>|<s>");
  });

  it("errors on a list without default, naming the file and the names found", () => {
    const dir = tmp({
      "tokenizer_config.json": JSON.stringify({ chat_template: [{ name: "rag", template: "x" }] }),
    });
    const e = thrown(() => loadChatTemplate(dir));
    expect(e.code).toBe("TEMPLATE_NOT_FOUND");
    expect(e.message).toContain(join(dir, "tokenizer_config.json"));
    expect(e.message).toContain('"rag"');
  });

  it("errors when there is no template, naming both places it looked", () => {
    const dir = tmp({ "tokenizer_config.json": JSON.stringify({ eos_token: "</s>" }) });
    const e = thrown(() => loadChatTemplate(dir));
    expect(e.code).toBe("TEMPLATE_NOT_FOUND");
    expect(e.message).toContain(join(dir, "tokenizer_config.json"));
    expect(e.message).toContain(join(dir, "chat_template.jinja"));
    const empty = tmp({});
    expect(thrown(() => loadChatTemplate(empty)).message).toContain("file missing");
  });

  it("errors on a chat_template of the wrong type, naming the field", () => {
    const dir = tmp({ "tokenizer_config.json": JSON.stringify({ chat_template: 3 }) });
    const e = thrown(() => loadChatTemplate(dir));
    expect(e.code).toBe("TEMPLATE_CONFIG_INVALID");
    expect(e.message).toContain("chat_template");
  });
});

describe("chat_template.jinja and Python string methods, against transformers", () => {
  // chat_template.jinja wins over tokenizer_config's template in transformers; the template exercises
  // strip/lstrip/rstrip with and without characters, where @huggingface/jinja alone differs from Python.
  const source = [
    "{%- for m in messages %}",
    "[{{ m.content.strip() }}|{{ m.content.lstrip('\\n') }}|{{ m.content.rstrip(' \\n') }}|{{ m.content.strip('x\\n') }}]",
    "{%- endfor %}",
    "{{- eos_token }}",
  ].join("\n");
  const contents = ["\n  x hello x \n", "\x1c\x85 a\u3000", "\ufeffbom\ufeff", "x\n😀 x\n", "", "   "];
  let dir: string;
  let expected: string;

  beforeAll(() => {
    dir = tmp({ "chat_template.jinja": source });
    copyFileSync(join(QWEN3_DIR, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
    copyFileSync(join(QWEN3_DIR, "tokenizer.json"), join(dir, "tokenizer.json"));
    const r = reference(
      { renders: [{ messages: contents.map((content) => ({ role: "user", content })) }] },
      dir,
    );
    expected = r.renders[0] as string;
  });

  it("renders byte-identical", () => {
    const t = loadChatTemplate(dir);
    expect(t.path).toBe(join(dir, "chat_template.jinja"));
    expect(typeof expected).toBe("string");
    expect(
      renderChat(
        t,
        contents.map((content) => ({ role: "user", content })),
      ),
    ).toBe(expected);
  });
});

describe("buildSamples", () => {
  const multi = conv([
    { role: "system", content: "S" },
    { role: "user", content: "u1" },
    { role: "assistant", content: "a1" },
    { role: "user", content: "u2" },
    { role: "assistant", content: "a2" },
  ]);

  it("trains the answer through <|im_end|> and not the newline after it (thinking off)", () => {
    const [s] = buildSamples(conv(multi.messages.slice(0, 3)), qwen, { turns: "all", thinking: false });
    expect(s.text).toBe(
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\na1<|im_end|>\n",
    );
    expect(s.trainedSpans.map(([a, b]) => s.text.slice(a, b))).toEqual(["a1<|im_end|>"]);
    expect(s.thinking).toBe(false);
    expect(s.source).toBe("data/chats.jsonl:7");
  });

  it("trains the empty think block in thinking mode when the turn has no reasoning", () => {
    const [s] = buildSamples(conv(multi.messages.slice(0, 3)), qwen, { turns: "all", thinking: true });
    expect(s.trainedSpans.map(([a, b]) => s.text.slice(a, b))).toEqual([
      "<think>\n\n</think>\n\na1<|im_end|>",
    ]);
  });

  it("policy 'last' trains the last assistant turn; 'all' gives one sample per turn for Qwen3 history", () => {
    const last = buildSamples(multi, qwen, { turns: "last", thinking: false });
    expect(last.map((s) => s.turns)).toEqual([[4]]);
    const all = buildSamples(multi, qwen, { turns: "all", thinking: false });
    expect(all.map((s) => s.turns)).toEqual([[2], [4]]);
    expect(all[0].text.endsWith("a1<|im_end|>\n")).toBe(true);
  });

  it("weights override the policy", () => {
    const w = conv(
      multi.messages.map((m, i) =>
        i === 2 ? { ...m, weight: 1 as const } : i === 4 ? { ...m, weight: 0 as const } : m,
      ),
    );
    expect(buildSamples(w, qwen, { turns: "last", thinking: false }).map((s) => s.turns)).toEqual([[2]]);
  });

  it("thinking 'auto' turns thinking on for conversations with reasoning; the conversation's own setting wins", () => {
    const r = conv([
      { role: "user", content: "q" },
      { role: "assistant", content: "a", reasoning: "because" },
    ]);
    const [s] = buildSamples(r, qwen, { turns: "all", thinking: "auto" });
    expect(s.thinking).toBe(true);
    expect(s.text.slice(...s.trainedSpans[0])).toBe("<think>\nbecause\n</think>\n\na<|im_end|>");
    expect(
      buildSamples({ ...multi, thinking: true }, qwen, { turns: "last", thinking: false })[0].thinking,
    ).toBe(true);
  });

  it("merges turns into one rendering only where exact: a reasoning tool chain after the last user turn", () => {
    const chain = conv(
      [
        { role: "user", content: "refund pay_1" },
        {
          role: "assistant",
          reasoning: "look up",
          content: "",
          tool_calls: [{ name: "get", arguments: { id: "pay_1" } }],
        },
        { role: "tool", content: "ok" },
        { role: "assistant", reasoning: "done", content: "Refunded." },
      ],
      { thinking: true },
    );
    const samples = buildSamples(chain, qwen);
    expect(samples.length).toBe(1);
    const [s] = samples;
    expect(s.trainedSpans.map(([a, b]) => s.text.slice(a, b))).toEqual([
      '<think>\nlook up\n</think>\n\n<tool_call>\n{"name": "get", "arguments": {"id": "pay_1"}}\n</tool_call><|im_end|>',
      "<think>\ndone\n</think>\n\nRefunded.<|im_end|>",
    ]);
    // the tool result is prompt
    expect(s.text.slice(s.trainedSpans[0][1], s.trainedSpans[1][0])).toBe(
      "\n<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    );
  });

  it("refuses reasoning in a non-thinking sample: TEMPLATE_NOT_PREFIX_STABLE naming source and first difference", () => {
    const r = conv(
      [
        { role: "user", content: "q" },
        { role: "assistant", content: "a", reasoning: "because" },
      ],
      { thinking: false },
    );
    const e = thrown(() => buildSamples(r, qwen));
    expect(e.code).toBe("TEMPLATE_NOT_PREFIX_STABLE");
    expect(e.message).toContain("data/chats.jsonl:7");
    expect(e.message).toContain("message 1");
    // prompt ends "<think>\n\n</think>\n\n", full has "<think>\nbecause..."; they part at the 2nd char after <think>\n
    const prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n";
    expect(e.message).toContain(`first difference at character ${prompt.length}`);
    expect(e.message).toContain('"\\n</think>\\n\\n"');
    expect(e.hint).toContain('"thinking": true');
  });

  it("refuses a template that is not prefix-stable", () => {
    const t = compileChatTemplate(
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}",
      "custom.jinja",
      { eos_token: "</s>" },
    );
    const e = thrown(() => buildSamples(multi, t));
    expect(e.code).toBe("TEMPLATE_NOT_PREFIX_STABLE");
    expect(e.message).toMatch(/prompt has "bot>", full rendering has "assistant>a1<\/s>/);
  });

  it("errors when no turn is trained, when the content holds the end-of-turn token, when there is no eos", () => {
    expect(thrown(() => buildSamples(conv([{ role: "user", content: "hi" }]), qwen)).code).toBe(
      "NO_TRAINED_TURN",
    );
    const eot = conv([
      { role: "user", content: "hi" },
      { role: "assistant", content: "a<|im_end|>b" },
    ]);
    expect(thrown(() => buildSamples(eot, qwen)).code).toBe("CONTENT_HAS_END_OF_TURN");
    const noEos = compileChatTemplate(qwen.source, "x.jinja", {});
    expect(thrown(() => buildSamples(multi, noEos)).code).toBe("TEMPLATE_NO_END_OF_TURN");
  });

  it("wraps template failures (an assistant first: Qwen3 reads messages[0] of an empty history)", () => {
    const e = thrown(() => buildSamples(conv([{ role: "assistant", content: "hello" }]), qwen));
    expect(e.code).toBe("TEMPLATE_RENDER_FAILED");
    expect(e.message).toContain("data/chats.jsonl:7");
  });
});

describe("tokenizeSample", () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(QWEN3_DIR);
  });

  it("weights exactly the trained tokens", () => {
    const [s] = buildSamples(
      conv([
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello there" },
      ]),
      qwen,
      {
        turns: "all",
        thinking: false,
      },
    );
    const { ids, lossWeight } = tokenizeSample(tok, s);
    const trained = Array.from(ids).filter((_, t) => lossWeight[t] === 1);
    expect(tok.decode(trained)).toBe("Hello there<|im_end|>");
    expect(lossWeight[ids.length - 1]).toBe(0); // the "\n" after <|im_end|>
  });

  it("refuses a span boundary inside a token: MASK_NOT_TOKEN_ALIGNED", () => {
    const text = "<|im_start|>user\nrefund<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>";
    const start = text.indexOf("Hello") + 2; // "Hello" is one Qwen3 token: "He|llo" is no token boundary
    const enc = tok.encodeWithOffsets(text);
    const starts = new Set(Array.from({ length: enc.ids.length }, (_, i) => enc.offsets[2 * i]));
    expect(starts.has(start)).toBe(false);
    const sample: Sample = {
      text,
      trainedSpans: [[start, text.length]],
      thinking: false,
      source: "x.jsonl:3",
      turns: [1],
    };
    const e = thrown(() => tokenizeSample(tok, sample));
    expect(e.code).toBe("MASK_NOT_TOKEN_ALIGNED");
    expect(e.message).toContain("x.jsonl:3");
    expect(e.message).toContain(`character ${start}`);
    const ok: Sample = { ...sample, trainedSpans: [[text.indexOf("Hello"), text.length]] };
    expect(Array.from(tokenizeSample(tok, ok).lossWeight).filter((w) => w === 1).length).toBeGreaterThan(1);
  });

  it("refuses a span on the first token, which is never a target", () => {
    const sample: Sample = {
      text: "Hello world",
      trainedSpans: [[0, 11]],
      thinking: false,
      source: "y:1",
      turns: [0],
    };
    expect(thrown(() => tokenizeSample(tok, sample)).code).toBe("MASK_NOT_TOKEN_ALIGNED");
  });
});
