// A Qwen3 model's raw generated text → reasoning, content and tool calls.
//
// Qwen3's chat template (tokenizer_config.json) teaches the model to answer as
//   [<think>\n…reasoning…\n</think>\n\n] content [<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>]*
// Thinking-mode prompts of the 2507 models already end in "<think>\n", so their output may start with the
// reasoning and only carry the closing tag. Malformed tool-call blocks never throw: each becomes a
// ParseIssue with a kind, so an evaluation can count them (BFCL scores an undecodable call as a failure).
import { isPlainObject, PyJsonError, parsePyJson } from "./pyjson.ts";

export interface ParsedCall {
  name: string;
  /** Parsed JSON arguments; integral float literals are PyFloat (see pyjson.ts). */
  arguments: Record<string, unknown>;
}

export type ParseIssueKind =
  | "truncated_json" // the JSON ended early (generation cut off)
  | "invalid_json" // not JSON
  | "not_object" // the block's JSON is not an object
  | "missing_name" // no "name", or not a non-empty string
  | "arguments_not_object" // "arguments" is a string, list, number…
  | "unclosed_tool_call" // <tool_call> with no </tool_call>, and the JSON inside is complete
  | "unclosed_think"; // <think> with no </think>

export interface ParseIssue {
  kind: ParseIssueKind;
  /** 0-based index of the <tool_call> block, where the issue belongs to one. */
  block?: number;
  message: string;
  /** The raw text of the block. */
  text?: string;
}

export interface ParsedOutput {
  /** Thinking text without tags, trimmed; undefined when the output has no think block. */
  reasoning?: string;
  /** Text outside the think and tool-call blocks, trimmed. */
  content: string;
  tool_calls: ParsedCall[];
  errors: ParseIssue[];
}

const OPEN_THINK = "<think>";
const CLOSE_THINK = "</think>";
const OPEN_CALL = "<tool_call>";
const CLOSE_CALL = "</tool_call>";

/** Splits leading reasoning off. `</think>` with no `<think>` before it means the prompt opened the block. */
function splitThinking(text: string): { reasoning?: string; rest: string; issue?: ParseIssue } {
  const close = text.indexOf(CLOSE_THINK);
  const open = text.indexOf(OPEN_THINK);
  if (open !== -1 && (close === -1 || open < close)) {
    if (text.slice(0, open).trim() !== "") return { rest: text }; // a tag in the middle of content: leave it
    if (close === -1) {
      return {
        reasoning: text.slice(open + OPEN_THINK.length).trim(),
        rest: "",
        issue: { kind: "unclosed_think", message: "<think> is never closed by </think>" },
      };
    }
    return {
      reasoning: text.slice(open + OPEN_THINK.length, close).trim(),
      rest: text.slice(close + CLOSE_THINK.length),
    };
  }
  if (close !== -1)
    return { reasoning: text.slice(0, close).trim(), rest: text.slice(close + CLOSE_THINK.length) };
  return { rest: text };
}

/** One block's JSON → a call, or the issue that stops it being one. */
export function parseToolCallJson(raw: string, block?: number): ParsedCall | ParseIssue {
  let v: unknown;
  try {
    v = parsePyJson(raw.trim());
  } catch (e) {
    if (!(e instanceof PyJsonError)) throw e;
    return {
      kind: e.truncated ? "truncated_json" : "invalid_json",
      block,
      message: `tool call JSON: ${e.message}`,
      text: raw,
    };
  }
  if (!isPlainObject(v))
    return { kind: "not_object", block, message: "tool call JSON is not an object", text: raw };
  if (typeof v.name !== "string" || v.name === "") {
    return { kind: "missing_name", block, message: 'tool call has no "name" string', text: raw };
  }
  // Qwen3's template always renders "arguments"; a call of a function without parameters may leave it out.
  const args = v.arguments === undefined ? {} : v.arguments;
  if (!isPlainObject(args)) {
    const got = Array.isArray(args) ? "a list" : typeof args === "string" ? "a string" : JSON.stringify(args);
    return {
      kind: "arguments_not_object",
      block,
      message: `"arguments" is ${got}, expected an object`,
      text: raw,
    };
  }
  return { name: v.name, arguments: args };
}

export function parseQwen3Output(text: string): ParsedOutput {
  const { reasoning, rest, issue } = splitThinking(text);
  const errors: ParseIssue[] = issue ? [issue] : [];
  const tool_calls: ParsedCall[] = [];
  const content: string[] = [];
  let pos = 0;
  let block = 0;
  for (;;) {
    const open = rest.indexOf(OPEN_CALL, pos);
    if (open === -1) {
      content.push(rest.slice(pos));
      break;
    }
    content.push(rest.slice(pos, open));
    const start = open + OPEN_CALL.length;
    const close = rest.indexOf(CLOSE_CALL, start);
    const raw = close === -1 ? rest.slice(start) : rest.slice(start, close);
    const r = parseToolCallJson(raw, block);
    if ("kind" in r) errors.push(r);
    else if (close === -1) {
      errors.push({
        kind: "unclosed_tool_call",
        block,
        message: "<tool_call> is never closed by </tool_call>",
        text: raw,
      });
    } else tool_calls.push(r);
    block++;
    if (close === -1) break;
    pos = close + CLOSE_CALL.length;
  }
  const out: ParsedOutput = { content: content.join("").trim(), tool_calls, errors };
  if (reasoning !== undefined) out.reasoning = reasoning;
  return out;
}
