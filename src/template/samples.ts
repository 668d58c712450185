// Conversations → training samples with trained character spans: the masking invariant (DESIGN.md).
//
// For every trained assistant turn i:
//   prompt_i = render(messages[0..i-1], add_generation_prompt=true, thinking mode, tools)
//   full_i   = render(messages[0..i],                                thinking mode, tools)
//   full_i must start with prompt_i (else TEMPLATE_NOT_PREFIX_STABLE); the rest is what the model generates:
//   the trained span runs from the end of prompt_i through the end-of-turn token (`<|im_end|>`), and stops
//   before the "\n" the template writes after it, because generation stops at `<|im_end|>`.
// Turns share one rendering only where that is verified to be exact: a longer rendering R carries turn i's span
// if R starts with prompt_i followed by turn i's generated text. Otherwise the turn gets its own sample. This
// is a check, not knowledge about Qwen3; docs/templates.md says what it gives for Qwen3.
import type { Conversation } from "../data/conversation.ts";
import { TunaError } from "../errors.ts";
import type { ChatTemplate } from "./load.ts";
import { renderChat, type TemplateMessage, toTemplateMessages, toTemplateTools } from "./render.ts";

export interface LossPolicy {
  /** Assistant turns trained when a message carries no `weight`: every one, or only the last one. */
  turns: "all" | "last";
  /**
   * Thinking mode for conversations that do not set `thinking`: on, off, or "auto" (on when any assistant
   * message carries `reasoning`, off otherwise).
   */
  thinking: boolean | "auto";
}

export const DEFAULT_LOSS_POLICY: LossPolicy = { turns: "all", thinking: "auto" };

export interface Sample {
  /** The rendered text (the model's own template), tokenized as one sequence. */
  text: string;
  /** [start, end) UTF-16 offsets into `text` of the trained characters, ascending, non-overlapping. */
  trainedSpans: [number, number][];
  /** Thinking mode the sample was rendered in (Qwen3 `enable_thinking`). */
  thinking: boolean;
  /** The conversation's `source` (file:line). */
  source: string;
  /** Indices (into the conversation's messages) of the assistant turns this sample trains. */
  turns: number[];
}

interface Turn {
  index: number;
  prompt: string;
  /** What the model generates for the turn, through the end-of-turn token. */
  generated: string;
  /** render(messages[0..index]) */
  full: string;
}

function firstDifference(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

const show = (s: string) => JSON.stringify(s);

function trainedTurns(conv: Conversation, policy: LossPolicy): number[] {
  const assistants = conv.messages.flatMap((m, i) => (m.role === "assistant" ? [i] : []));
  const last = assistants.at(-1);
  return assistants.filter((i) => {
    const w = conv.messages[i].weight;
    if (w !== undefined) return w === 1;
    return policy.turns === "all" || i === last;
  });
}

function renderTurn(
  template: ChatTemplate,
  conv: Conversation,
  messages: TemplateMessage[],
  index: number,
  thinking: boolean,
): Turn {
  const eos = template.eosToken;
  if (!eos) {
    throw new TunaError(
      "TEMPLATE_NO_END_OF_TURN",
      "the tokenizer config names no eos_token (end-of-turn token)",
      {
        where: template.path,
        hint: "set eos_token in tokenizer_config.json to the token the model ends an assistant turn with",
      },
    );
  }
  const tools = toTemplateTools(conv.tools);
  const where = `${conv.source} message ${index}`;
  const prompt = renderChat(template, messages.slice(0, index), {
    addGenerationPrompt: true,
    enableThinking: thinking,
    tools,
    source: where,
  });
  const full = renderChat(template, messages.slice(0, index + 1), {
    addGenerationPrompt: false,
    enableThinking: thinking,
    tools,
    source: where,
  });
  if (!full.startsWith(prompt)) {
    const k = firstDifference(prompt, full);
    const m = conv.messages[index];
    const hint =
      !thinking && m.reasoning?.trim()
        ? 'this turn has reasoning but the sample is rendered with thinking off: set "thinking": true on the conversation (or a thinking default of "auto"/on), or drop the reasoning'
        : "the template renders this turn's history differently from the prompt the model would see; check the roles and order of the messages";
    throw new TunaError(
      "TEMPLATE_NOT_PREFIX_STABLE",
      `assistant turn (message ${index}, thinking ${thinking ? "on" : "off"}): the rendering through this turn does not start with the rendering of its history + generation prompt; first difference at character ${k}: prompt has ${show(prompt.slice(k, k + 24))}, full rendering has ${show(full.slice(k, k + 24))}`,
      { where: conv.source, hint },
    );
  }
  const rest = full.slice(prompt.length);
  const end = rest.lastIndexOf(eos);
  if (end < 0 || rest.slice(end + eos.length).trim() !== "") {
    throw new TunaError(
      "TEMPLATE_NO_END_OF_TURN",
      `assistant turn (message ${index}): the rendered turn ${show(rest.slice(-60))} does not end with the end-of-turn token ${show(eos)} (followed by whitespace at most)`,
      { where: conv.source, hint: `template ${template.path}: Tuna trains each turn through ${eos}` },
    );
  }
  const generated = rest.slice(0, end + eos.length);
  if (generated.indexOf(eos) !== end) {
    throw new TunaError(
      "CONTENT_HAS_END_OF_TURN",
      `assistant turn (message ${index}): the text contains the end-of-turn token ${show(eos)} before its end; the model would stop there`,
      {
        where: conv.source,
        hint: `remove ${show(eos)} from the message's content, reasoning and tool calls`,
      },
    );
  }
  return { index, prompt, generated, full };
}

/**
 * Cut a conversation into training samples, each a rendering with the character spans the model is trained to
 * generate. Throws a TunaError (with the conversation's source) when no turn is trained or a turn cannot be
 * masked exactly.
 */
export function buildSamples(
  conv: Conversation,
  template: ChatTemplate,
  policy: LossPolicy = DEFAULT_LOSS_POLICY,
): Sample[] {
  const thinking =
    conv.thinking ??
    (policy.thinking === "auto" ? conv.messages.some((m) => m.reasoning !== undefined) : policy.thinking);
  const indices = trainedTurns(conv, policy);
  if (indices.length === 0) {
    throw new TunaError(
      "NO_TRAINED_TURN",
      `no assistant turn to train on (loss policy "${policy.turns}", ${
        conv.messages.filter((m) => m.role === "assistant").length
      } assistant messages, weights ${JSON.stringify(conv.messages.map((m) => m.weight ?? null))})`,
      { where: conv.source, hint: "add an assistant answer, or set weight 1 on one" },
    );
  }
  const messages = toTemplateMessages(conv.messages);
  const turns = indices.map((i) => renderTurn(template, conv, messages, i, thinking));

  // Latest turn first: its rendering is the longest, so earlier turns can ride on it when that is exact.
  const samples: Sample[] = [];
  for (const t of [...turns].reverse()) {
    const span: [number, number] = [t.prompt.length, t.prompt.length + t.generated.length];
    const host = samples.find(
      (s) =>
        s.text.startsWith(t.prompt) &&
        s.text.startsWith(t.generated, t.prompt.length) &&
        span[1] <= s.trainedSpans[0][0], // later turns' spans start after this one ends
    );
    if (host) {
      host.trainedSpans.unshift(span);
      host.turns.unshift(t.index);
    } else {
      samples.unshift({
        text: t.full,
        trainedSpans: [span],
        thinking,
        source: conv.source,
        turns: [t.index],
      });
    }
  }
  for (const s of samples) s.trainedSpans.sort((a, b) => a[0] - b[0]);
  return samples.sort((a, b) => a.turns[0] - b.turns[0]);
}
