// `tuna template render <model-dir> --messages <file.json>`: print exactly what the model's own chat template
// makes of an OpenAI-style message list (what transformers' apply_chat_template(..., tokenize=False) gives).
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { z } from "zod";
import { TunaError } from "../errors.ts";
import { loadChatTemplate, renderChat, TemplateMessage } from "../template/index.ts";

// OpenAI sends `content: null` on assistant messages that only call tools; the template reads a string.
const CliMessage = z.preprocess(
  (m) =>
    m !== null && typeof m === "object" && (m as { content?: unknown }).content === null
      ? { ...m, content: "" }
      : m,
  TemplateMessage,
);
const MessageList = z.array(CliMessage).min(1);
const ToolList = z.array(z.record(z.string(), z.unknown()));
const MessagesObject = z.object({ messages: MessageList, tools: ToolList.optional() }).loose();
const ToolsObject = z.object({ tools: ToolList }).loose();

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new TunaError("CLI_FILE_UNREADABLE", `cannot read the ${what} file: ${(e as Error).message}`, {
      where: path,
      cause: e,
    });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TunaError("CLI_FILE_INVALID", `not valid JSON: ${(e as Error).message}`, {
      where: path,
      cause: e,
    });
  }
}

function parse<T>(schema: z.ZodType<T>, value: unknown, path: string, expected: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const field = issue.path.length
    ? issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("")
    : "(top level)";
  let given: unknown = value;
  for (const p of issue.path) given = (given as Record<PropertyKey, unknown> | undefined)?.[p as PropertyKey];
  throw new TunaError(
    "CLI_FILE_INVALID",
    `field ${field.replace(/^\./, "")}: ${issue.message}; given ${JSON.stringify(given)?.slice(0, 80)}`,
    { where: path, hint: `expected ${expected}` },
  );
}

export function register(program: Command): void {
  const template = program
    .command("template")
    .description("Chat templates: render messages with a model's own template");

  template
    .command("render")
    .description(
      "Print the model's chat template applied to a message list, exactly (no trailing newline added), as " +
        "transformers' apply_chat_template(messages, tools=..., add_generation_prompt=..., enable_thinking=..., tokenize=False) does.",
    )
    .argument("<model-dir>", "model directory with tokenizer_config.json (or chat_template.jinja)")
    .requiredOption(
      "--messages <file.json>",
      "OpenAI-style message array, or {messages, tools}; reasoning_content and tool_calls as OpenAI gives them",
    )
    .option("--generation-prompt", "append the assistant header the model generates after", false)
    .option("--thinking <on|off>", "Qwen3 enable_thinking (default: not passed, so Qwen3 thinks)")
    .option(
      "--tools <file.json>",
      "OpenAI tool list (array, or {tools}); overrides tools in the messages file",
    )
    .action(
      (
        modelDir: string,
        opts: { messages: string; generationPrompt: boolean; thinking?: string; tools?: string },
      ) => {
        let enableThinking: boolean | undefined;
        if (opts.thinking !== undefined) {
          if (opts.thinking !== "on" && opts.thinking !== "off") {
            throw new TunaError(
              "CLI_BAD_OPTION",
              `--thinking must be "on" or "off", got ${JSON.stringify(opts.thinking)}`,
            );
          }
          enableThinking = opts.thinking === "on";
        }
        const expected =
          'a JSON array of messages {role, content, reasoning_content?, tool_calls?: [{type: "function", function: {name, arguments}}]}, or {messages, tools}';
        // Parse by shape, so an error names the field inside the array (messages[2].content), not the union.
        const raw = readJson(opts.messages, "messages");
        let messages: TemplateMessage[];
        let tools: Record<string, unknown>[] | undefined;
        if (Array.isArray(raw)) messages = parse(MessageList, raw, opts.messages, expected);
        else ({ messages, tools } = parse(MessagesObject, raw, opts.messages, expected));
        if (opts.tools !== undefined) {
          const rawTools = readJson(opts.tools, "tools");
          const expectedTools = "a JSON array of tools, or {tools}";
          tools = Array.isArray(rawTools)
            ? parse(ToolList, rawTools, opts.tools, expectedTools)
            : parse(ToolsObject, rawTools, opts.tools, expectedTools).tools;
        }
        const tpl = loadChatTemplate(modelDir);
        process.stdout.write(
          renderChat(tpl, messages, {
            addGenerationPrompt: opts.generationPrompt,
            enableThinking,
            tools,
            source: opts.messages,
          }),
        );
      },
    );
}
