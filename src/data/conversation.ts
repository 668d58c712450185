// The one internal type every dataset format becomes (DESIGN.md "Data contracts").
import { z } from "zod";

export const ToolCall = z.object({
  name: z.string().min(1),
  /** Parsed JSON arguments (an object). Readers parse string arguments; unparsable ones are a validation error. */
  arguments: z.record(z.string(), z.unknown()),
  id: z.string().optional(),
});
export type ToolCall = z.infer<typeof ToolCall>;

export const Message = z.object({
  role: z.enum(["system", "user", "assistant", "tool"]),
  content: z.string(),
  /** Assistant thinking text (without <think> tags). */
  reasoning: z.string().optional(),
  tool_calls: z.array(ToolCall).optional(),
  /** For role "tool": the id of the call it answers, and the tool's name, where the source gives them. */
  tool_call_id: z.string().optional(),
  name: z.string().optional(),
  /** 0 or 1: whether this assistant turn is trained on. Absent = decided by the loss policy. */
  weight: z.union([z.literal(0), z.literal(1)]).optional(),
});
export type Message = z.infer<typeof Message>;

/** A function tool in OpenAI form: {type: "function", function: {name, description, parameters}}. */
export const Tool = z.object({
  type: z.literal("function"),
  function: z.object({
    name: z.string().min(1),
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
  }),
});
export type Tool = z.infer<typeof Tool>;

export const Conversation = z.object({
  messages: z.array(Message).min(1),
  tools: z.array(Tool).optional(),
  /** Where the record came from, `file:line` (or `file#row`), kept through every stage for error messages. */
  source: z.string(),
  /** Per-sample thinking mode override; absent = the run's default. */
  thinking: z.boolean().optional(),
});
export type Conversation = z.infer<typeof Conversation>;

/** A preference pair (DPO/ORPO-style): shared prompt turns, then a chosen and a rejected assistant answer.
 * Read and validated now; stored for training methods that come later. */
export const PreferencePair = z.object({
  prompt: z.array(Message).min(1),
  chosen: Message,
  rejected: Message,
  tools: z.array(Tool).optional(),
  source: z.string(),
});
export type PreferencePair = z.infer<typeof PreferencePair>;

/** Plain text for continued pre-training (every token trained). */
export const PlainText = z.object({
  text: z.string().min(1),
  source: z.string(),
});
export type PlainText = z.infer<typeof PlainText>;
