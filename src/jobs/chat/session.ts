// `tuna chat`'s state and commands, apart from the terminal: one conversation (system prompt, tools,
// thinking mode, history) against a running generator. The CLI (src/cli/chat.ts) feeds it lines and Ctrl-C.
//
// Commands: /think on|off, /system <text> (empty: none), /tools <file.json> | off, /reset, /raw on|off,
// /help, /exit. A line that is not a command is a user message; the answer streams to `write`.
import { readFileSync } from "node:fs";
import { z } from "zod";
import {
  type ChatAnswer,
  type ChatModel,
  chatOnce,
  type Generator,
  type Sampling,
} from "../../engine/generate.ts";
import { TunaError } from "../../errors.ts";
import { toPlain } from "../../eval/pyjson.ts";
import type { TemplateMessage } from "../../template/render.ts";

export const HELP = [
  "/think on|off       thinking mode (Qwen3 enable_thinking)",
  "/system <text>      set the system prompt (/system alone removes it); resets the conversation",
  "/tools <file.json>  offer these tools (OpenAI form: a list, or {tools: [...]}); /tools off removes them",
  "/reset              forget the conversation (system prompt and tools stay)",
  "/raw on|off         show the raw output, tool-call tags included",
  "/exit               quit (Ctrl-C at an empty prompt too; Ctrl-C while answering stops the answer)",
].join("\n");

const FunctionTool = z
  .object({
    type: z.literal("function"),
    function: z
      .object({ name: z.string().min(1), description: z.string().optional(), parameters: z.unknown() })
      .loose(),
  })
  .loose();
const ToolsFile = z.union([z.array(FunctionTool), z.object({ tools: z.array(FunctionTool) }).loose()]);

/** Reads an OpenAI-form tools file: a list of {type: "function", function: {...}} or an object with `tools`. */
export function readToolsFile(file: string): unknown[] {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new TunaError("CHAT_TOOLS_FILE", `cannot read tools from ${file}: ${(e as Error).message}`, {
      hint: "a JSON file with a list of OpenAI-form tools: [{type: 'function', function: {name, parameters}}]",
      cause: e,
    });
  }
  const r = ToolsFile.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new TunaError(
      "CHAT_TOOLS_FILE",
      `field ${issue.path.join(".") || "(top level)"}: ${issue.message}`,
      {
        where: file,
        hint: "expected a list of {type: 'function', function: {name, description, parameters}} (or {tools: [...]})",
      },
    );
  }
  return Array.isArray(r.data) ? r.data : r.data.tools;
}

/** Hides `<tool_call>…</tool_call>` blocks from streamed text (the parsed calls are shown after the answer). */
export class ToolCallHider {
  private text = "";
  private shown = 0;

  static readonly OPEN = "<tool_call>";
  static readonly CLOSE = "</tool_call>";

  /** The visible part of the text so far; a suffix that may be the start of a tag is held back. */
  private visible(final: boolean): string {
    const { OPEN, CLOSE } = ToolCallHider;
    let out = "";
    let pos = 0;
    for (;;) {
      const open = this.text.indexOf(OPEN, pos);
      if (open === -1) {
        let rest = this.text.slice(pos);
        if (!final) {
          for (let k = Math.min(OPEN.length - 1, rest.length); k > 0; k--) {
            if (OPEN.startsWith(rest.slice(rest.length - k))) {
              rest = rest.slice(0, rest.length - k);
              break;
            }
          }
        }
        return out + rest;
      }
      out += this.text.slice(pos, open);
      const close = this.text.indexOf(CLOSE, open + OPEN.length);
      if (close === -1) return out;
      pos = close + CLOSE.length;
    }
  }

  push(piece: string): string {
    this.text += piece;
    const v = this.visible(false);
    const out = v.slice(this.shown);
    this.shown = v.length;
    return out;
  }

  flush(): string {
    const v = this.visible(true);
    const out = v.slice(this.shown);
    this.shown = v.length;
    return out;
  }
}

/**
 * Control characters in model output (a random or broken model emits byte tokens such as ESC) would drive the
 * terminal; they are shown as their Unicode control pictures (␛, ␍) instead. Newlines and tabs stay.
 */
export function visibleText(s: string): string {
  return s.replace(/(?![\n\t])\p{Cc}/gu, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x20 ? String.fromCharCode(0x2400 + code) : code === 0x7f ? "\u2421" : "\ufffd";
  });
}

export function formatCall(c: { name: string; arguments: Record<string, unknown> }): string {
  return visibleText(`${c.name}(${JSON.stringify(c.arguments)})`);
}

export interface ChatSessionOptions {
  gen: Generator;
  model: ChatModel;
  adapter?: string | null;
  sampling: Sampling;
  thinking?: boolean;
  system?: string;
  tools?: unknown[];
  raw?: boolean;
  /** Where everything the user sees goes. */
  write: (s: string) => void;
}

export class ChatSession {
  thinking: boolean;
  raw: boolean;
  system: string | undefined;
  tools: unknown[] | undefined;
  readonly history: TemplateMessage[] = [];
  private current: string | undefined;
  private readonly o: ChatSessionOptions;
  private turn = 0;

  constructor(o: ChatSessionOptions) {
    this.o = o;
    this.thinking = o.thinking ?? true;
    this.raw = o.raw ?? false;
    this.system = o.system;
    this.tools = o.tools;
  }

  /** True while an answer is being generated. */
  get busy(): boolean {
    return this.current !== undefined;
  }

  /** Ctrl-C while answering: stop the answer (the session goes on). */
  cancel(): boolean {
    if (this.current === undefined) return false;
    this.o.gen.cancel(this.current);
    return true;
  }

  status(): string {
    const tools = this.tools?.length ?? 0;
    return `thinking ${this.thinking ? "on" : "off"}, ${tools} tool${tools === 1 ? "" : "s"}, raw ${this.raw ? "on" : "off"}${
      this.system ? `, system prompt ${JSON.stringify(this.system.slice(0, 40))}` : ""
    }`;
  }

  /** One input line. Resolves to "exit" when the session should end. */
  async handle(line: string): Promise<"exit" | undefined> {
    const w = this.o.write;
    const text = line.trim();
    if (text === "") return undefined;
    if (text.startsWith("/")) {
      const [cmd, ...rest] = text.split(/\s+/);
      const arg = text.slice(cmd.length).trim();
      const onOff = (what: string): boolean | undefined => {
        if (rest.length === 1 && (rest[0] === "on" || rest[0] === "off")) return rest[0] === "on";
        w(`usage: ${cmd} on|off (${what})\n`);
        return undefined;
      };
      switch (cmd) {
        case "/exit":
        case "/quit":
          return "exit";
        case "/help":
          w(`${HELP}\n`);
          return undefined;
        case "/think": {
          const v = onOff("thinking mode");
          if (v !== undefined) {
            this.thinking = v;
            w(`thinking ${v ? "on" : "off"}\n`);
          }
          return undefined;
        }
        case "/raw": {
          const v = onOff("show tool-call tags");
          if (v !== undefined) {
            this.raw = v;
            w(`raw ${v ? "on" : "off"}\n`);
          }
          return undefined;
        }
        case "/system":
          this.system = arg === "" ? undefined : arg;
          this.history.length = 0;
          w(
            this.system
              ? "system prompt set; conversation reset\n"
              : "system prompt removed; conversation reset\n",
          );
          return undefined;
        case "/tools":
          if (arg === "" || arg === "off") {
            this.tools = undefined;
            w("tools off\n");
          } else {
            try {
              this.tools = readToolsFile(arg);
              const names = this.tools.map((t) => (t as { function: { name: string } }).function.name);
              w(`${names.length} tools: ${names.join(", ")}\n`);
            } catch (e) {
              w(`${(e as Error).message}\n`);
            }
          }
          return undefined;
        case "/reset":
          this.history.length = 0;
          w("conversation reset\n");
          return undefined;
        default:
          w(`unknown command ${cmd}; /help lists them\n`);
          return undefined;
      }
    }
    await this.ask(line);
    return undefined;
  }

  /** Sends a user message and streams the answer. */
  async ask(userText: string): Promise<ChatAnswer | undefined> {
    const w = this.o.write;
    const messages: TemplateMessage[] = [
      ...(this.system ? [{ role: "system", content: this.system }] : []),
      ...this.history,
      { role: "user", content: userText },
    ];
    const hider = new ToolCallHider();
    const id = `chat-${++this.turn}`;
    this.current = id;
    let answer: ChatAnswer;
    try {
      answer = await chatOnce({
        gen: this.o.gen,
        model: this.o.model,
        messages,
        tools: this.tools,
        thinking: this.thinking,
        adapter: this.o.adapter ?? null,
        sampling: this.o.sampling,
        id,
        onText: (piece) => w(visibleText(this.raw ? piece : hider.push(piece))),
      });
    } catch (e) {
      w(`\n[error] ${(e as Error).message}\n`);
      if (e instanceof TunaError && e.hint) w(`hint: ${e.hint}\n`);
      return undefined;
    } finally {
      this.current = undefined;
    }
    if (!this.raw) w(visibleText(hider.flush()));
    w("\n");
    for (const c of answer.tool_calls) w(`→ tool call: ${formatCall(c)}\n`);
    for (const e of answer.errors) w(`[unparsed tool call: ${e.message}]\n`);
    if (answer.reason === "cancelled") {
      // A stopped answer is not kept: the next message is asked as if this one had not been.
      w("[stopped]\n");
      return answer;
    }
    if (answer.reason === "length") w(`[cut off at ${this.o.sampling.maxNewTokens} tokens]\n`);
    this.history.push({ role: "user", content: userText });
    const reply: TemplateMessage = { role: "assistant", content: answer.content };
    if (answer.reasoning !== undefined) reply.reasoning_content = answer.reasoning;
    if (answer.tool_calls.length > 0) {
      reply.tool_calls = answer.tool_calls.map((c) => ({
        type: "function",
        function: { name: c.name, arguments: toPlain(c.arguments) as Record<string, unknown> },
      }));
    }
    this.history.push(reply);
    return answer;
  }
}
