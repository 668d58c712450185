// `tuna chat`: the session's commands and history (what reaches the engine), tool-call display, the piped
// mode and, in a real terminal (tmux), Ctrl-C stopping an answer without ending the session. The engine is
// the protocol stand-in (test/fixtures/generate/fake-engine.mjs) except in the last test, which drives the
// real engine on the tiny model.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../src/engine/runner.ts";
import { ToolCallHider } from "../src/jobs/chat/session.ts";
import { loadChatTemplate, renderChat } from "../src/template/index.ts";
import { loadTokenizer } from "../src/tokenizer/index.ts";

const FAKE = join(REPO_ROOT, "test/fixtures/generate/fake-engine.mjs");
const TUNA = join(REPO_ROOT, "bin/tuna.mjs");
const TOOLS = join(REPO_ROOT, "examples/payment-support/tools.json");
let tmp: string;
let modelDir: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "tuna-chat-test-"));
  modelDir = join(tmp, "tiny");
  execFileSync("node", [TUNA, "model", "init", modelDir, "--preset", "tiny"], {
    cwd: REPO_ROOT,
    stdio: "ignore",
  });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function chat(input: string, env: Record<string, string>, args: string[] = []) {
  const r = spawnSync("node", [TUNA, "chat", modelDir, ...args], {
    cwd: REPO_ROOT,
    input,
    env: { ...process.env, ...env },
    encoding: "utf8",
    timeout: 90_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("ToolCallHider", () => {
  it("hides tool-call blocks however the text is split, and keeps the rest", () => {
    const text = 'Sure.<tool_call>\n{"name": "x"}\n</tool_call> done <tool_ <tool_call>{"name"';
    for (const size of [1, 2, 3, 7, 100]) {
      const h = new ToolCallHider();
      let out = "";
      for (let i = 0; i < text.length; i += size) out += h.push(text.slice(i, i + size));
      out += h.flush();
      expect(out).toBe("Sure. done <tool_ ");
    }
  });
});

describe("tuna chat (stdin piped)", () => {
  it("sends the template's prompt with thinking, system prompt, tools and history as the commands set them", async () => {
    const tok = await loadTokenizer(modelDir);
    const imEnd = tok.tokenToId("<|im_end|>")!;
    const reply =
      'Frozen 退款.<tool_call>\n{"name": "freeze_card", "arguments": {"card_last4": "3242", "reason": "stolen"}}\n</tool_call>';
    const log = join(tmp, "chat-requests.jsonl");
    const r = chat(
      [
        "/think off",
        "first",
        "/system Be brief.",
        `/tools ${TOOLS}`,
        "second",
        "third",
        "/reset",
        "/raw on",
        "fourth",
        "/exit",
        "never",
      ].join("\n"),
      {
        TUNA_PYTHON: FAKE,
        FAKE_REQUEST_LOG: log,
        FAKE_REPLY_IDS: JSON.stringify([...tok.encode(reply), imEnd]),
      },
      ["--max-new-tokens", "300"],
    );
    expect(r.stderr).toContain("ready on cpu");
    expect(r.code).toBe(0);
    const sent = readFileSync(log, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(sent).toHaveLength(4); // "never" comes after /exit
    const tpl = loadChatTemplate(modelDir);
    const tools = JSON.parse(readFileSync(TOOLS, "utf8"));
    const answer = {
      role: "assistant",
      content: "Frozen 退款.",
      tool_calls: [
        {
          type: "function",
          function: { name: "freeze_card", arguments: { card_last4: "3242", reason: "stolen" } },
        },
      ],
    };
    const sys = { role: "system", content: "Be brief." };
    const expected = [
      renderChat(tpl, [{ role: "user", content: "first" }], {
        addGenerationPrompt: true,
        enableThinking: false,
      }),
      renderChat(tpl, [sys, { role: "user", content: "second" }], {
        addGenerationPrompt: true,
        enableThinking: false,
        tools,
      }),
      renderChat(
        tpl,
        [sys, { role: "user", content: "second" }, answer, { role: "user", content: "third" }],
        {
          addGenerationPrompt: true,
          enableThinking: false,
          tools,
        },
      ),
      renderChat(tpl, [sys, { role: "user", content: "fourth" }], {
        addGenerationPrompt: true,
        enableThinking: false,
        tools,
      }),
    ];
    for (const [i, p] of expected.entries()) expect(tok.decode(sent[i].prompt_ids)).toBe(p);
    expect(expected[0]).toContain("<think>\n\n</think>");
    for (const s of sent)
      expect(s).toMatchObject({ max_new_tokens: 300, stop_ids: expect.arrayContaining([imEnd]) });

    // Output: tags hidden until /raw on, the call shown parsed every time.
    const out = r.stdout;
    const turns = out.split("you> ").slice(1);
    const fourth = turns.find((t) => t.startsWith("fourth"))!;
    const first = turns.find((t) => t.startsWith("first"))!;
    expect(first).toContain("Frozen 退款.\n");
    expect(first).not.toContain("<tool_call>");
    expect(first).toContain('→ tool call: freeze_card({"card_last4":"3242","reason":"stolen"})');
    expect(fourth).toContain('<tool_call>\n{"name": "freeze_card"');
    expect(fourth).toContain("→ tool call: freeze_card(");
    expect(out).toContain("7 tools: get_transaction, refund_transaction, freeze_card");
    expect(out).not.toContain("never");
  });

  it("reports a bad tools file and an engine error and goes on", async () => {
    const r = chat(["/tools /no/such.json", "/think maybe", "hi"].join("\n"), {
      TUNA_PYTHON: FAKE,
      FAKE_FAIL: "crash",
    });
    expect(r.stdout).toContain("cannot read tools from /no/such.json");
    expect(r.stdout).toContain("usage: /think on|off");
    expect(r.stdout).toContain("[error]");
    expect(r.stdout).toContain("exited with 3");
    const bad = chat("", { TUNA_PYTHON: FAKE }, ["--temperature", "-1"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--temperature "-1" is not a number ≥ 0');
  });
});

const hasTmux = spawnSync("tmux", ["-V"]).status === 0;

describe("tuna chat in a terminal (tmux)", () => {
  it.skipIf(!hasTmux)(
    "Ctrl-C stops the answer, not the session; Ctrl-C at an empty prompt quits",
    async () => {
      const sock = `tuna-chat-test-${process.pid}`;
      const tmuxRun = (...a: string[]) => execFileSync("tmux", ["-L", sock, ...a], { encoding: "utf8" });
      const screen = () => tmuxRun("capture-pane", "-p", "-J", "-S", "-200");
      const until = async (pred: (s: string) => boolean, what: string) => {
        for (let i = 0; i < 300; i++) {
          const s = screen();
          if (pred(s)) return s;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(`timed out waiting for ${what}; screen:\n${screen()}`);
      };
      const log = join(tmp, "tmux-requests.jsonl");
      const cmd = `cd ${REPO_ROOT} && TUNA_PYTHON=${FAKE} FAKE_TOKEN_MS=40 FAKE_REQUEST_LOG=${log} node ${TUNA} chat ${modelDir} --max-new-tokens 2000; echo "EXIT=$?"; sleep 60`;
      tmuxRun("new-session", "-d", "-s", "chat", "-x", "160", "-y", "50", cmd);
      try {
        await until((s) => s.includes("you>"), "the prompt");
        tmuxRun("send-keys", "-t", "chat", "tell me a story", "Enter");
        await until(() => existsSync(log), "the request");
        await new Promise((r) => setTimeout(r, 600)); // some tokens stream
        tmuxRun("send-keys", "-t", "chat", "C-c");
        await until((s) => s.includes("[stopped]"), "[stopped]");
        expect(readFileSync(log, "utf8")).toContain('"type":"cancel"');
        tmuxRun("send-keys", "-t", "chat", "/think off", "Enter");
        await until((s) => s.includes("thinking off"), "the session to go on");
        tmuxRun("send-keys", "-t", "chat", "C-c");
        const s = await until((x) => x.includes("EXIT="), "exit");
        expect(s).toContain("EXIT=0");
      } finally {
        spawnSync("tmux", ["-L", sock, "kill-server"]);
      }
    },
  );
});

describe("tuna chat with the real engine", () => {
  it("answers piped messages on the tiny model, greedy answers repeatable", () => {
    const input = ["hello", "/think off", "hello", "/reset", "/think on", "hello"].join("\n");
    const r = chat(input, {}, ["--max-new-tokens", "5", "--temperature", "0"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/ready on cpu \(float32\)/);
    const turns = r.stdout.split("you> ").slice(1);
    const answers = turns.filter((t) => t.startsWith("hello\n")).map((t) => t.slice("hello\n".length));
    expect(answers).toHaveLength(3);
    for (const a of answers) expect(a).toMatch(/\[cut off at 5 tokens\]\n$|\n$/);
    // Same conversation, thinking mode and greedy decoding: the same answer (first and third).
    expect(answers[2]).toBe(answers[0]);
  });
});
