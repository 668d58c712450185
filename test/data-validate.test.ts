import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { adaptRecord } from "../src/data/formats.ts";
import { processRecord, validateFiles } from "../src/data/validate.ts";
import { isTunaError } from "../src/errors.ts";

const tmp = mkdtempSync(path.join(tmpdir(), "tuna-validate-"));
const tools = [
  {
    type: "function",
    function: {
      name: "refund",
      description: "Refund an order",
      parameters: { type: "object", properties: { order_id: { type: "string" } }, required: ["order_id"] },
    },
  },
];
const ok = {
  messages: [
    { role: "user", content: "hi" },
    { role: "assistant", content: "hello" },
  ],
};
const call = (args: unknown) => ({
  messages: [
    { role: "user", content: "refund 42" },
    {
      role: "assistant",
      content: null,
      tool_calls: [{ id: "c1", type: "function", function: { name: "refund", arguments: args } }],
    },
    { role: "tool", tool_call_id: "c1", content: "done" },
    { role: "assistant", content: "Refunded." },
  ],
  tools,
});

// Each broken line, and the reason it must be skipped for.
const broken: [string, string][] = [
  ['{"messages": [{"role": "user", "content": "hi"}, {"role": "assist', "invalid_json"],
  ['{"messages": "hello"}', "wrong_type"],
  [
    '{"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
    "unknown_role",
  ],
  ['{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}', "wrong_type"],
  ['{"messages": [{"role": "user", "content": "hi"}]}', "no_final_assistant"],
  ['{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}', "empty_content"],
  [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}]}',
    "empty_content",
  ],
  [JSON.stringify(call("{not json")), "tool_arguments"],
  [JSON.stringify(call("[1, 2]")), "tool_arguments"],
  [
    JSON.stringify({
      ...call({ order_id: "1" }),
      tools: [
        {
          type: "function",
          function: {
            name: "refund",
            parameters: { type: "object", properties: {}, required: ["order_id"] },
          },
        },
      ],
    }),
    "tools_schema",
  ],
  [
    JSON.stringify({
      ...call({ order_id: "1" }),
      tools: [
        { type: "function", function: { name: "cancel", parameters: { type: "object", properties: {} } } },
      ],
    }),
    "unknown_tool",
  ],
  [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "x"}]}',
    "role_order",
  ],
  [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}, {"role": "assistant", "content": "x"}]}',
    "role_order",
  ],
  [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]}',
    "nothing_to_train",
  ],
  [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 2}]}',
    "wrong_type",
  ],
  ['{"conversations": [{"from": "alien", "value": "hi"}]}', "unknown_role"],
  ['{"instruction": 7, "output": "x"}', "wrong_type"],
  ['{"foo": 1}', "unknown_format"],
  ["[1, 2, 3]", "wrong_type"],
  ["null", "wrong_type"],
  ['{"prompt": "q", "chosen": "same", "rejected": "same"}', "preference_same"],
];

describe("validation over a corpus of broken records", () => {
  it("never crashes and accounts for every line", async () => {
    const junk = Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0xff, 0xfe, 0x00, 0x80, 0x7d]); // binary junk
    const tenMB = `{"messages": [{"role": "user", "content": "${"x".repeat(10 * 1024 * 1024)}"}, {"role": "assistant", "content": "y"}]}`;
    const lines: Buffer[] = [
      Buffer.from(JSON.stringify(ok)),
      ...broken.map(([l]) => Buffer.from(l)),
      junk,
      Buffer.from(tenMB),
      Buffer.from(JSON.stringify(call({ order_id: "42" }))),
      Buffer.from(JSON.stringify(call('{"order_id": "42"}'))),
      Buffer.from('{"prompt": "q", "chosen": "good", "rejected": "bad"}'),
      Buffer.from('{"text": "plain pretraining text"}'),
    ];
    const f = path.join(tmp, "broken.jsonl");
    writeFileSync(f, Buffer.concat(lines.flatMap((l) => [l, Buffer.from("\n")])));
    const report = await validateFiles([f]);
    expect(report.total).toBe(lines.length);
    expect(report.valid + report.skipped).toBe(lines.length);
    expect(report.valid).toBe(5);
    expect(report.byKind).toEqual({ conversation: 3, preference: 1, text: 1 });
    const json = report.toJSON();
    expect(json.skippedByReason.oversize_line.count).toBe(1);
    expect(json.skippedByReason.invalid_utf8.count).toBe(1);
    const expected: Record<string, number> = { oversize_line: 1, invalid_utf8: 1 };
    for (const [, reason] of broken) expected[reason] = (expected[reason] ?? 0) + 1;
    expect(Object.fromEntries(Object.entries(json.skippedByReason).map(([k, v]) => [k, v.count]))).toEqual(
      expected,
    );
    // Examples name file:line, field path and what was expected.
    const args = json.skippedByReason.tool_arguments.examples[0];
    expect(args.source).toBe(`${f}:9`);
    expect(args.path).toBe("messages[1].tool_calls[0].function.arguments");
    expect(json.skippedByReason.unknown_role.examples[0].message).toContain('got "customer"');
    expect(report.format()).toContain("tool_arguments: 2");
  }, 60_000);

  it("strict mode throws the first problem with file:line and field", async () => {
    const f = path.join(tmp, "strict.jsonl");
    writeFileSync(f, `${JSON.stringify(ok)}\n${JSON.stringify(call("{oops"))}\n`);
    const err = await validateFiles([f], { strict: true }).catch((e) => e);
    expect(isTunaError(err)).toBe(true);
    expect(err.code).toBe("DATA_INVALID");
    expect(err.message).toContain(
      `${f}:2: messages[1].tool_calls[0].function.arguments: arguments string is not valid JSON`,
    );
  });
});

describe("formats", () => {
  it("OpenAI: reasoning_content, <think>, tool-call arguments as string or object, content parts", () => {
    const a = adaptRecord(
      {
        messages: [
          { role: "system", content: [{ type: "text", text: "Be brief." }] },
          { role: "user", content: "refund 42" },
          {
            role: "assistant",
            content: "<think>\nneeds a call\n</think>\n\n",
            tool_calls: [{ function: { name: "refund", arguments: '{"order_id":"42"}' } }],
          },
          { role: "tool", content: "ok" },
          { role: "assistant", reasoning: "done", content: "Refunded.", weight: 1 },
        ],
        tools,
      },
      "x:1",
    );
    expect(a.kind).toBe("conversation");
    if (a.kind !== "conversation") return;
    const m = a.value.messages;
    expect(m[0].content).toBe("Be brief.");
    expect(m[2]).toEqual({
      role: "assistant",
      content: "",
      reasoning: "needs a call",
      tool_calls: [{ name: "refund", arguments: { order_id: "42" } }],
    });
    expect(m[4]).toEqual({ role: "assistant", content: "Refunded.", reasoning: "done", weight: 1 });
    expect(processRecord({ messages: a.value.messages, tools }, "x:1").kind).toBe("conversation");
  });

  it("ShareGPT with function_call/observation and tools as a JSON string (LLaMA-Factory shape)", () => {
    const r = processRecord(
      {
        conversations: [
          { from: "human", value: "refund order 42" },
          { from: "function_call", value: '{"name": "refund", "arguments": {"order_id": "42"}}' },
          { from: "observation", value: '{"status": "ok"}' },
          { from: "gpt", value: "Done, order 42 is refunded." },
        ],
        system: "You are a payment assistant.",
        tools: JSON.stringify(tools.map((t) => t.function)),
      },
      "s:1",
    );
    expect(r.kind).toBe("conversation");
    if (r.kind !== "conversation") return;
    expect(r.value.messages.map((m) => m.role)).toEqual(["system", "user", "assistant", "tool", "assistant"]);
    expect(r.value.messages[2].tool_calls?.[0]).toMatchObject({
      name: "refund",
      arguments: { order_id: "42" },
    });
    expect(r.value.tools?.[0].function.name).toBe("refund");
  });

  it("Alpaca with history, and column mapping with <think> split (OpenMathReasoning shape)", () => {
    const a = processRecord(
      { instruction: "Translate", input: "你好", output: "Hello", system: "s", history: [["q1", "a1"]] },
      "a:1",
    );
    expect(a.kind === "conversation" && a.value.messages.map((m) => [m.role, m.content])).toEqual([
      ["system", "s"],
      ["user", "q1"],
      ["assistant", "a1"],
      ["user", "Translate\n你好"],
      ["assistant", "Hello"],
    ]);
    const c = processRecord(
      {
        problem: "1+1?",
        generated_solution: "<think>\nadd them\n</think>\nThe answer is 2.",
        expected_answer: "2",
      },
      "c:1",
      { columns: { user: "problem", assistant: "generated_solution" }, thinking: true },
    );
    expect(c.kind === "conversation" && c.value).toEqual({
      messages: [
        { role: "user", content: "1+1?" },
        { role: "assistant", content: "The answer is 2.", reasoning: "add them" },
      ],
      source: "c:1",
      thinking: true,
    });
    const missing = processRecord({ problem: "x" }, "c:2", {
      columns: { user: "problem", assistant: "generated_solution" },
    });
    expect(missing.kind === "invalid" && missing.issues[0]).toMatchObject({
      reason: "missing_field",
      path: "generated_solution",
    });
  });
});
