// Render messages through the model's own chat template, byte-identical to transformers'
// `tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=..., enable_thinking=..., tokenize=False)`.
//
// Two message shapes meet here:
// - TemplateMessage: what the jinja template reads (OpenAI-style dicts: `reasoning_content`, `tool_calls` as
//   `{type: "function", function: {name, arguments}}`). The CLI passes a user's file through as it is.
// - Conversation messages (src/data/conversation.ts): converted by `toTemplateMessages`.
import { z } from "zod";
import type { Message, Tool } from "../data/conversation.ts";
import { TunaError } from "../errors.ts";
import { renderPythonCompat } from "./jinja.ts";
import type { ChatTemplate } from "./load.ts";

/** A message as chat templates read it. Unknown keys are kept: templates may read them. */
export const TemplateMessage = z
  .object({
    role: z.string().min(1),
    content: z.string(),
    reasoning_content: z.string().optional(),
    tool_calls: z
      .array(
        z
          .object({
            type: z.string().optional(),
            id: z.string().optional(),
            function: z
              .object({
                name: z.string().min(1),
                arguments: z.union([z.string(), z.record(z.string(), z.unknown())]),
              })
              .loose(),
          })
          .loose(),
      )
      .optional(),
  })
  .loose();
export type TemplateMessage = z.infer<typeof TemplateMessage>;

export interface RenderOptions {
  /** Append the assistant header the model generates after (HF `add_generation_prompt`). */
  addGenerationPrompt?: boolean;
  /** Qwen3 `enable_thinking`; undefined = not passed to the template (Qwen3 then thinks). */
  enableThinking?: boolean;
  /** Function tools in OpenAI form, passed as `tools`. */
  tools?: readonly unknown[];
  /** Where the messages came from, for error messages. */
  source?: string;
}

/** Our Conversation messages → the dicts the template reads. Arguments stay objects so `tojson` renders them. */
export function toTemplateMessages(messages: readonly Message[]): TemplateMessage[] {
  return messages.map((m) => {
    const out: TemplateMessage = { role: m.role, content: m.content };
    if (m.reasoning !== undefined) out.reasoning_content = m.reasoning;
    if (m.tool_calls !== undefined) {
      out.tool_calls = m.tool_calls.map((c) => ({
        ...(c.id !== undefined ? { id: c.id } : {}),
        type: "function",
        function: { name: c.name, arguments: c.arguments },
      }));
    }
    if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
    if (m.name !== undefined) out.name = m.name;
    return out;
  });
}

/** Tools as the template reads them (the Conversation's zod-parsed OpenAI form is already that). */
export function toTemplateTools(tools: readonly Tool[] | undefined): Tool[] | undefined {
  return tools && tools.length > 0 ? [...tools] : undefined;
}

/** Drop keys whose value is undefined, deeply: in jinja an absent key is `undefined`, a present one is not. */
function clean(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(clean);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = clean(x);
    return out;
  }
  return v;
}

export function renderChat(
  template: ChatTemplate,
  messages: readonly TemplateMessage[],
  opts: RenderOptions = {},
): string {
  if (messages.length === 0) {
    // transformers refuses too ("Cannot apply chat template to an empty conversation").
    throw new TunaError("TEMPLATE_RENDER_FAILED", "cannot render an empty list of messages", {
      where: opts.source,
    });
  }
  // Same variables transformers passes: special tokens first, then the call's arguments (which win).
  const vars: Record<string, unknown> = {
    ...template.specialTokens,
    messages: clean(messages),
    tools: opts.tools === undefined ? null : clean(opts.tools),
    documents: null,
    add_generation_prompt: opts.addGenerationPrompt ?? false,
  };
  if (opts.enableThinking !== undefined) vars.enable_thinking = opts.enableThinking;
  try {
    return renderPythonCompat(template.compiled, vars);
  } catch (e) {
    throw new TunaError("TEMPLATE_RENDER_FAILED", `the chat template failed: ${(e as Error).message}`, {
      where: opts.source ?? template.path,
      hint: `template ${template.path}; check the roles and fields of the messages`,
      cause: e,
    });
  }
}
