// `tuna template render` prints exactly what transformers' apply_chat_template(..., tokenize=False) gives.
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { RAW, TOOLS } from "./fixtures/template/cases.ts";
import { QWEN3_DIR, REPO, reference } from "./fixtures/template/reference.ts";

const dir = mkdtempSync(join(tmpdir(), "tuna-template-cli-"));
const file = (name: string, value: unknown) => {
  const p = join(dir, name);
  writeFileSync(p, JSON.stringify(value));
  return p;
};

function tuna(args: string[]) {
  return spawnSync(
    process.execPath,
    [resolve(REPO, "bin/tuna.mjs"), "template", "render", QWEN3_DIR, ...args],
    {
      cwd: REPO,
      encoding: "utf8",
    },
  );
}

const openai = RAW.find((r) => r.name === "openai-string-arguments")!;
const reasoning = [
  { role: "system", content: "你是客服。" },
  { role: "user", content: "Fee on 100 EUR at 1.5%?" },
  { role: "assistant", reasoning_content: "1.5 EUR.", content: "1.50 EUR 💶" },
  { role: "user", content: "And 200?" },
];
const nullContent = [
  { role: "user", content: "Status of pay_3?" },
  {
    role: "assistant",
    content: null,
    tool_calls: [
      {
        id: "c",
        type: "function",
        function: { name: "get_payment_status", arguments: { payment_id: "pay_3" } },
      },
    ],
  },
  { role: "tool", tool_call_id: "c", content: "settled" },
];

describe("tuna template render", () => {
  let want: string[];
  beforeAll(() => {
    const r = reference({
      renders: [
        { messages: openai.messages, tools: TOOLS, add_generation_prompt: true, enable_thinking: false },
        { messages: reasoning, tools: TOOLS, add_generation_prompt: false },
        { messages: reasoning, add_generation_prompt: true, enable_thinking: true },
        // transformers fails on content None with this template; Tuna reads null as "" (OpenAI's meaning)
        {
          messages: nullContent.map((m) => ({ ...m, content: m.content ?? "" })),
          add_generation_prompt: true,
        },
      ],
    });
    want = r.renders.map((x) => {
      if (typeof x !== "string") throw new Error(x.error);
      return x;
    });
  });

  it("renders {messages, tools} with --generation-prompt --thinking off", () => {
    const r = tuna([
      "--messages",
      file("a.json", { messages: openai.messages, tools: TOOLS }),
      "--generation-prompt",
      "--thinking",
      "off",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(want[0]);
  });

  it("renders a bare array with --tools from another file, no trailing newline added", () => {
    const r = tuna([
      "--messages",
      file("b.json", reasoning),
      "--tools",
      file("tools.json", { tools: TOOLS }),
    ]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(want[1]);
    expect(r.stdout.endsWith("<|im_end|>\n")).toBe(true);
  });

  it("--thinking on", () => {
    const r = tuna(["--messages", file("c.json", reasoning), "--generation-prompt", "--thinking", "on"]);
    expect(r.stdout).toBe(want[2]);
  });

  it("reads OpenAI's content: null as empty", () => {
    const r = tuna(["--messages", file("d.json", nullContent), "--generation-prompt"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(want[3]);
  });

  it("names the file, field and value of a bad message; rejects a bad --thinking", () => {
    const bad = file("bad.json", {
      messages: [
        { role: "user", content: "x" },
        { role: "assistant", content: 5 },
      ],
    });
    const r = tuna(["--messages", bad]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("CLI_FILE_INVALID");
    expect(r.stderr).toContain(bad);
    expect(r.stderr).toContain("messages[1].content");
    expect(r.stderr).toContain("given 5");
    const t = tuna(["--messages", file("ok.json", reasoning), "--thinking", "maybe"]);
    expect(t.status).toBe(2);
    expect(t.stderr).toContain('--thinking must be "on" or "off"');
  });
});
