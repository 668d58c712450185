// `tuna data preview` through the real CLI on the payment-support examples with a tiny model directory: the
// rendering is transformers' apply_chat_template byte for byte, and the ⟦…⟧ marks enclose exactly the assistant
// answers through <|im_end|> (what the model generates), nothing of the prompt.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLOSE, markTrained, OPEN } from "../src/jobs/data/preview.ts";
import { reference } from "./fixtures/template/reference.ts";

const REPO = resolve(import.meta.dirname, "..");
const EX = "examples/payment-support";
const tmp = mkdtempSync(join(tmpdir(), "tuna-data-preview-"));
const model = join(tmp, "tiny");
const config = join(tmp, "run.yaml");

function tuna(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [join(REPO, "bin/tuna.mjs"), ...args], {
    cwd: REPO,
    encoding: "utf8",
    env: { ...process.env, ...env },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

interface Shown {
  source: string;
  thinking: boolean;
  tokens: number;
  trained: number;
  turns: number[];
  body: string;
}

/** Cut the text output into samples: header line, then the marked rendering up to the next header. */
function parse(out: string): Shown[] {
  // stdout ends with one "\n" after the last sample's text.
  const parts = out
    .replace(/\n$/, "")
    .split(/\n\n── sample /)
    .slice(1);
  return parts.map((p) => {
    const nl = p.indexOf("\n");
    const head = p.slice(0, nl);
    const m = head.match(
      /^\d+\/\d+ · (\S+) · thinking (on|off) · (\d+) tokens, (\d+) trained \([\d.]+%\) · trains assistant messages? ([\d, ]+)$/,
    );
    if (!m) throw new Error(`bad header: ${head}`);
    return {
      source: m[1],
      thinking: m[2] === "on",
      tokens: Number(m[3]),
      trained: Number(m[4]),
      turns: m[5].split(", ").map(Number),
      body: p.slice(nl + 1),
    };
  });
}

const ESC = String.fromCharCode(27);
const spans = (body: string) => [...body.matchAll(/⟦([^⟦⟧]*)⟧/gs)].map((m) => m[1]);
const unmarked = (body: string) => body.replaceAll(OPEN, "").replaceAll(CLOSE, "");

/** The raw JSONL record a `file:line` source names. */
function record(source: string): { messages: Record<string, unknown>[] } {
  const [file, line] = source.split(":");
  return JSON.parse(readFileSync(join(REPO, file), "utf8").split("\n")[Number(line) - 1]);
}

beforeAll(() => {
  const r = tuna(["model", "init", model, "--preset", "tiny"]);
  expect(r.code, r.err).toBe(0);
  writeFileSync(
    config,
    [
      `model: ${model}`,
      "data:",
      "  sources:",
      `    - { path: ${EX}/style.jsonl, name: style }`,
      `    - { path: ${EX}/knowledge.jsonl, name: knowledge }`,
      `    - { path: ${EX}/reasoning.jsonl, name: reasoning, thinking: true }`,
      `    - { path: ${EX}/tools.jsonl, name: tools }`,
      "  seed: 42",
      "  clean: { dedup: { near: false } }",
      "template: { thinking: false, loss_on: all }",
      "pack: { max_length: 2048 }",
      "",
    ].join("\n"),
  );
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("tuna data preview", () => {
  it("marks exactly the assistant answers through <|im_end|>, matching transformers' rendering and token count", () => {
    const r = tuna(["data", "preview", config, "-n", "4", "--source", "style", "--seed", "7"]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^4 samples from 84 conversations; trained tokens between ⟦ and ⟧/);
    const shown = parse(r.out);
    expect(shown).toHaveLength(4);
    const renders = shown.map((s) => {
      const msgs = record(s.source).messages;
      return {
        messages: msgs.slice(0, s.turns.at(-1)! + 1),
        add_generation_prompt: false,
        enable_thinking: false,
      };
    });
    const ref = reference({ renders, encode_renders: true }, model);
    shown.forEach((s, i) => {
      expect(s.source).toMatch(/^examples\/payment-support\/style\.jsonl:\d+$/);
      expect(s.thinking).toBe(false);
      const msgs = record(s.source).messages;
      // One marked span per trained turn: its content and the end-of-turn token, nothing else.
      expect(spans(s.body)).toEqual(s.turns.map((t) => `${msgs[t].content}<|im_end|>`));
      for (const t of s.turns) expect(msgs[t].role).toBe("assistant");
      // Outside the marks: the prompt, with its special tokens shown as text.
      expect(unmarked(s.body)).toBe(ref.renders[i]);
      expect(s.body.startsWith("<|im_start|>system\n")).toBe(true);
      expect(s.tokens).toBe(ref.render_ids[i]?.length);
      expect(s.trained).toBeGreaterThan(0);
      expect(s.trained).toBeLessThan(s.tokens);
    });
    // Same seed, same choice; another seed, another one.
    expect(tuna(["data", "preview", config, "-n", "4", "--source", "style", "--seed", "7"]).out).toBe(r.out);
    expect(tuna(["data", "preview", config, "-n", "4", "--source", "style", "--seed", "8"]).out).not.toBe(
      r.out,
    );
  });

  it("thinking on: the trained span is the <think> block, the answer and <|im_end|>", () => {
    const r = tuna(["data", "preview", config, "-n", "3", "--source", "reasoning"]);
    expect(r.code, r.err).toBe(0);
    const shown = parse(r.out);
    expect(shown).toHaveLength(3);
    const ref = reference(
      {
        renders: shown.map((s) => ({
          messages: record(s.source).messages.slice(0, s.turns.at(-1)! + 1),
          add_generation_prompt: false,
          enable_thinking: true,
        })),
      },
      model,
    );
    shown.forEach((s, i) => {
      expect(s.thinking).toBe(true);
      const msgs = record(s.source).messages;
      const want = s.turns.map(
        (t) => `<think>\n${msgs[t].reasoning_content}\n</think>\n\n${msgs[t].content}<|im_end|>`,
      );
      expect(spans(s.body)).toEqual(want);
      expect(unmarked(s.body)).toBe(ref.renders[i]);
    });
  });

  it("tool calls are trained, tool results are not", () => {
    const r = tuna(["data", "preview", config, "-n", "6", "--source", "tools", "--json"]);
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out) as {
      samples: { text: string; trained: [number, number][]; source: string; turns: number[] }[];
    };
    expect(j.samples).toHaveLength(6);
    let calls = 0;
    for (const s of j.samples) {
      const marked = s.trained.map(([a, b]) => s.text.slice(a, b));
      expect(marked).toHaveLength(s.turns.length);
      for (const m of marked) {
        expect(m.endsWith("<|im_end|>")).toBe(true);
        expect(m).not.toContain("<|im_start|>");
        expect(m).not.toContain("<tool_response>");
        if (m.includes("<tool_call>")) calls++;
      }
      // Every <tool_response> in the text lies outside the trained ranges.
      for (const at of [...s.text.matchAll(/<tool_response>/g)].map((x) => x.index)) {
        expect(s.trained.some(([a, b]) => at >= a && at < b)).toBe(false);
      }
    }
    expect(calls).toBeGreaterThan(0);
  });

  it("NO_COLOR and non-TTY get brackets; a terminal gets colour around the same ranges", () => {
    const text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>";
    const a = text.indexOf("hello");
    const ranges: [number, number][] = [[a, text.length]];
    expect(markTrained(text, ranges, false)).toBe(`${text.slice(0, a)}⟦hello<|im_end|>⟧`);
    const colored = markTrained(text, ranges, true);
    expect(colored).not.toContain("⟦");
    // Strip ANSI: the same text; the trained part is inside the green escape.
    expect(colored.replace(new RegExp(`${ESC}\\[[\\d;]*m`, "g"), "")).toBe(text);
    expect(colored.endsWith("\x1b[32mhello\x1b[1;35m<|im_end|>\x1b[0m\x1b[32m\x1b[0m")).toBe(true);
    // The CLI honours NO_COLOR even where it would otherwise colour (stdout here is a pipe: brackets either way).
    const r = tuna(["data", "preview", config, "-n", "1", "--source", "knowledge"], { NO_COLOR: "1" });
    expect(r.out).toContain("⟦");
    expect(r.out).not.toContain("\x1b[");
  });

  it("an unknown --source names the ones there are", () => {
    const r = tuna(["data", "preview", config, "--source", "nope"]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--source: no source named "nope"');
    expect(r.err).toContain('"style", "knowledge", "reasoning", "tools"');
  });
});
