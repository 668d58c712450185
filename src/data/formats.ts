// Format adapters: one raw record (from any reader) → Conversation, PreferencePair or PlainText, or a list of
// issues naming the field path in the raw record. Formats are detected per record (see `detectFormat`) and
// can be forced per source.
import type { Conversation, Message, PlainText, PreferencePair, Tool, ToolCall } from "./conversation.ts";
import type { Issue } from "./report.ts";

export const FORMATS = ["openai", "sharegpt", "alpaca", "columns", "preference", "text"] as const;
export type Format = (typeof FORMATS)[number];

/** Column mapping for tables in no known format, e.g. {user: "problem", assistant: "generated_solution"}. */
export interface ColumnMap {
  user: string;
  assistant: string;
  system?: string;
  /** A column holding the reasoning separately (otherwise `<think>` in the answer is split out). */
  reasoning?: string;
  /** A column holding the tools (JSON string or array). */
  tools?: string;
}

export interface AdaptOptions {
  format?: Format;
  columns?: ColumnMap;
  /** Per-source thinking flag copied onto each conversation. */
  thinking?: boolean;
}

/** The adapter's result; `paths[i]` is where messages[i] came from in the raw record (for later checks). */
export type Adapted =
  | { kind: "conversation"; value: Conversation; paths: string[] }
  | { kind: "preference"; value: PreferencePair }
  | { kind: "text"; value: PlainText }
  | { kind: "invalid"; issues: Issue[] };

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function show(v: unknown): string {
  let s: string;
  try {
    s = typeof v === "string" ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  } catch {
    s = String(v);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Which format a record is in, from its keys; null when none fits. */
export function detectFormat(rec: unknown): Format | null {
  if (!isObj(rec)) return null;
  if ("messages" in rec) return "openai";
  if ("conversations" in rec) return "sharegpt";
  if ("chosen" in rec && "rejected" in rec) return "preference";
  if ("instruction" in rec && "output" in rec) return "alpaca";
  if (
    "text" in rec &&
    Object.keys(rec).every((k) => k === "text" || k === "id" || k === "meta" || k === "source")
  )
    return "text";
  return null;
}

/** Split `<think>…</think>` at the start of an answer (or an answer with only the closing tag) into reasoning. */
export function splitThink(content: string): { content: string; reasoning?: string } {
  const m = /^\s*<think>([\s\S]*?)<\/think>\s*/.exec(content);
  if (m) return { reasoning: m[1].trim(), content: content.slice(m[0].length) };
  // Some datasets drop the opening tag (the template adds it): "reasoning…</think>answer".
  const close = content.indexOf("</think>");
  if (close !== -1 && !content.slice(0, close).includes("<think>")) {
    return {
      reasoning: content.slice(0, close).trim(),
      content: content.slice(close + 8).replace(/^\s+/, ""),
    };
  }
  return { content };
}

class Ctx {
  issues: Issue[] = [];
  constructor(readonly source: string) {}
  add(reason: string, path: string, message: string): void {
    this.issues.push({ reason, source: this.source, path, message });
  }
}

/** Content: string, null (→ ""), or OpenAI content parts [{type: "text", text}]. */
function readContent(v: unknown, path: string, ctx: Ctx): string | undefined {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const texts: string[] = [];
    for (let i = 0; i < v.length; i++) {
      const p = v[i];
      if (isObj(p) && p.type === "text" && typeof p.text === "string") texts.push(p.text);
      else {
        ctx.add(
          "wrong_type",
          `${path}[${i}]`,
          `expected a text part {type: "text", text: string}, got ${show(p)}`,
        );
        return undefined;
      }
    }
    return texts.join("");
  }
  ctx.add("wrong_type", path, `expected a string or null, got ${typeName(v)} ${show(v)}`);
  return undefined;
}

function readArguments(v: unknown, path: string, ctx: Ctx): Record<string, unknown> | undefined {
  if (typeof v === "string") {
    let parsed: unknown;
    try {
      parsed = v.trim() === "" ? {} : JSON.parse(v);
    } catch (e) {
      ctx.add(
        "tool_arguments",
        path,
        `arguments string is not valid JSON (${(e as Error).message.slice(0, 80)}): ${show(v)}`,
      );
      return undefined;
    }
    if (!isObj(parsed)) {
      ctx.add(
        "tool_arguments",
        path,
        `arguments must be a JSON object, got ${typeName(parsed)} ${show(parsed)}`,
      );
      return undefined;
    }
    return parsed;
  }
  if (v === undefined || v === null) return {};
  if (isObj(v)) return v;
  ctx.add(
    "tool_arguments",
    path,
    `arguments must be a JSON object or a JSON string of one, got ${typeName(v)} ${show(v)}`,
  );
  return undefined;
}

/** A tool call in OpenAI form {id, type, function: {name, arguments}} or flat {name, arguments}. */
function readToolCall(v: unknown, path: string, ctx: Ctx): ToolCall | undefined {
  if (!isObj(v)) {
    ctx.add("wrong_type", path, `expected a tool call object, got ${typeName(v)} ${show(v)}`);
    return undefined;
  }
  const fn = isObj(v.function) ? v.function : v;
  const fnPath = isObj(v.function) ? `${path}.function` : path;
  if (typeof fn.name !== "string" || fn.name === "") {
    ctx.add("wrong_type", `${fnPath}.name`, `expected a non-empty tool name, got ${show(fn.name)}`);
    return undefined;
  }
  const args = readArguments(fn.arguments ?? fn.parameters, `${fnPath}.arguments`, ctx);
  if (!args) return undefined;
  const call: ToolCall = { name: fn.name, arguments: args };
  if (typeof v.id === "string") call.id = v.id;
  return call;
}

/** Tools: an array (or JSON string of one) of {type: "function", function: {...}} or flat {name, parameters}. */
export function readTools(v: unknown, path: string, ctx: Ctx): Tool[] | undefined {
  let arr = v;
  if (typeof v === "string") {
    if (v.trim() === "") return undefined;
    try {
      arr = JSON.parse(v);
    } catch (e) {
      ctx.add("tools_schema", path, `tools string is not valid JSON (${(e as Error).message.slice(0, 80)})`);
      return undefined;
    }
  }
  if (arr === null || arr === undefined) return undefined;
  if (!Array.isArray(arr)) {
    ctx.add("tools_schema", path, `expected an array of tools, got ${typeName(arr)}`);
    return undefined;
  }
  const tools: Tool[] = [];
  for (let i = 0; i < arr.length; i++) {
    const t = arr[i];
    const p = `${path}[${i}]`;
    if (!isObj(t)) {
      ctx.add("tools_schema", p, `expected a tool object, got ${typeName(t)}`);
      return undefined;
    }
    const fn = isObj(t.function) ? t.function : t;
    if (t.type !== undefined && t.type !== "function") {
      ctx.add("tools_schema", `${p}.type`, `expected "function", got ${show(t.type)}`);
      return undefined;
    }
    if (typeof fn.name !== "string" || fn.name === "") {
      ctx.add(
        "tools_schema",
        `${p}${fn === t ? "" : ".function"}.name`,
        `expected a non-empty name, got ${show(fn.name)}`,
      );
      return undefined;
    }
    if (fn.description !== undefined && typeof fn.description !== "string") {
      ctx.add(
        "tools_schema",
        `${p}.function.description`,
        `expected a string, got ${typeName(fn.description)}`,
      );
      return undefined;
    }
    if (fn.parameters !== undefined && !isObj(fn.parameters)) {
      ctx.add(
        "tools_schema",
        `${p}.function.parameters`,
        `expected a JSON Schema object, got ${typeName(fn.parameters)}`,
      );
      return undefined;
    }
    const tool: Tool = { type: "function", function: { name: fn.name } };
    if (typeof fn.description === "string") tool.function.description = fn.description;
    if (isObj(fn.parameters)) tool.function.parameters = fn.parameters;
    tools.push(tool);
  }
  return tools;
}

function readWeight(v: unknown, path: string, ctx: Ctx): 0 | 1 | undefined | null {
  if (v === undefined || v === null) return undefined;
  if (v === 0 || v === 1) return v;
  if (v === true || v === false) return v ? 1 : 0;
  ctx.add("wrong_type", path, `weight must be 0 or 1, got ${show(v)}`);
  return null;
}

const OPENAI_ROLES = new Set(["system", "user", "assistant", "tool"]);

function adaptOpenAI(
  rec: Record<string, unknown>,
  ctx: Ctx,
): { messages: Message[]; paths: string[]; tools?: Tool[] } | undefined {
  const msgs = rec.messages;
  if (!Array.isArray(msgs)) {
    ctx.add("wrong_type", "messages", `expected an array of messages, got ${typeName(msgs)}`);
    return undefined;
  }
  const messages: Message[] = [];
  const paths: string[] = [];
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i];
    const p = `messages[${i}]`;
    if (!isObj(m)) {
      ctx.add("wrong_type", p, `expected a message object, got ${typeName(m)} ${show(m)}`);
      return undefined;
    }
    let role = m.role;
    if (role === "function") role = "tool"; // legacy OpenAI function results
    if (typeof role !== "string" || !OPENAI_ROLES.has(role)) {
      ctx.add(
        "unknown_role",
        `${p}.role`,
        `expected one of system, user, assistant, tool; got ${show(m.role)}`,
      );
      return undefined;
    }
    const content = readContent(m.content, `${p}.content`, ctx);
    if (content === undefined) return undefined;
    const msg: Message = { role: role as Message["role"], content };
    const reasoningField =
      m.reasoning_content !== undefined
        ? "reasoning_content"
        : m.reasoning !== undefined
          ? "reasoning"
          : null;
    if (reasoningField && m[reasoningField] !== null) {
      const r = m[reasoningField];
      if (typeof r !== "string") {
        ctx.add("wrong_type", `${p}.${reasoningField}`, `expected a string, got ${typeName(r)}`);
        return undefined;
      }
      if (role !== "assistant") {
        ctx.add(
          "role_order",
          `${p}.${reasoningField}`,
          `only assistant messages carry reasoning, this one is "${role}"`,
        );
        return undefined;
      }
      if (/^\s*<think>/.test(content)) {
        ctx.add(
          "reasoning_twice",
          `${p}.content`,
          `reasoning is given in ${reasoningField} and again as <think> in content`,
        );
        return undefined;
      }
      if (r !== "") msg.reasoning = r;
    } else if (role === "assistant") {
      const split = splitThink(content);
      msg.content = split.content;
      if (split.reasoning !== undefined) msg.reasoning = split.reasoning;
    }
    if (m.tool_calls !== undefined && m.tool_calls !== null) {
      if (role !== "assistant") {
        ctx.add(
          "role_order",
          `${p}.tool_calls`,
          `only assistant messages make tool calls, this one is "${role}"`,
        );
        return undefined;
      }
      if (!Array.isArray(m.tool_calls)) {
        ctx.add("wrong_type", `${p}.tool_calls`, `expected an array, got ${typeName(m.tool_calls)}`);
        return undefined;
      }
      const calls: ToolCall[] = [];
      for (let k = 0; k < m.tool_calls.length; k++) {
        const c = readToolCall(m.tool_calls[k], `${p}.tool_calls[${k}]`, ctx);
        if (!c) return undefined;
        calls.push(c);
      }
      if (calls.length) msg.tool_calls = calls;
    } else if (isObj(m.function_call) && role === "assistant") {
      const c = readToolCall(m.function_call, `${p}.function_call`, ctx);
      if (!c) return undefined;
      msg.tool_calls = [c];
    }
    if (typeof m.tool_call_id === "string") msg.tool_call_id = m.tool_call_id;
    if (typeof m.name === "string" && m.name !== "") msg.name = m.name;
    const w = readWeight(m.weight, `${p}.weight`, ctx);
    if (w === null) return undefined;
    if (w !== undefined) msg.weight = w;
    messages.push(msg);
    paths.push(p);
  }
  const tools = rec.tools !== undefined ? readTools(rec.tools, "tools", ctx) : undefined;
  if (ctx.issues.length) return undefined;
  return { messages, paths, tools };
}

const SHAREGPT_ROLES: Record<string, Message["role"] | "function_call"> = {
  system: "system",
  human: "user",
  user: "user",
  gpt: "assistant",
  assistant: "assistant",
  function_call: "function_call",
  observation: "tool",
  tool: "tool",
  function: "tool",
};

function adaptShareGPT(
  rec: Record<string, unknown>,
  ctx: Ctx,
): { messages: Message[]; paths: string[]; tools?: Tool[] } | undefined {
  const turns = rec.conversations;
  if (!Array.isArray(turns)) {
    ctx.add("wrong_type", "conversations", `expected an array of {from, value}, got ${typeName(turns)}`);
    return undefined;
  }
  const messages: Message[] = [];
  const paths: string[] = [];
  if (rec.system !== undefined && rec.system !== null && rec.system !== "") {
    if (typeof rec.system !== "string") {
      ctx.add("wrong_type", "system", `expected a string, got ${typeName(rec.system)}`);
      return undefined;
    }
    messages.push({ role: "system", content: rec.system });
    paths.push("system");
  }
  let callN = 0;
  for (let i = 0; i < turns.length; i++) {
    const t = turns[i];
    const p = `conversations[${i}]`;
    if (!isObj(t)) {
      ctx.add("wrong_type", p, `expected {from, value}, got ${typeName(t)} ${show(t)}`);
      return undefined;
    }
    const from = t.from ?? t.role;
    const role = typeof from === "string" ? SHAREGPT_ROLES[from] : undefined;
    if (!role) {
      ctx.add(
        "unknown_role",
        `${p}.from`,
        `expected one of human, gpt, system, function_call, observation; got ${show(from)}`,
      );
      return undefined;
    }
    const value = readContent(t.value ?? t.content ?? null, `${p}.value`, ctx);
    if (value === undefined) return undefined;
    if (role === "function_call") {
      // JSON of {name, arguments} (or a list of them for parallel calls).
      let parsed: unknown;
      try {
        parsed = JSON.parse(value);
      } catch (e) {
        ctx.add(
          "tool_arguments",
          `${p}.value`,
          `function_call value is not valid JSON (${(e as Error).message.slice(0, 80)})`,
        );
        return undefined;
      }
      const list = Array.isArray(parsed) ? parsed : [parsed];
      const calls: ToolCall[] = [];
      for (let k = 0; k < list.length; k++) {
        const c = readToolCall(list[k], Array.isArray(parsed) ? `${p}.value[${k}]` : `${p}.value`, ctx);
        if (!c) return undefined;
        c.id ??= `call_${callN++}`;
        calls.push(c);
      }
      const prev = messages[messages.length - 1];
      if (prev && prev.role === "assistant" && !prev.tool_calls)
        prev.tool_calls = calls; // text, then the call
      else {
        messages.push({ role: "assistant", content: "", tool_calls: calls });
        paths.push(p);
      }
      continue;
    }
    const msg: Message = { role, content: value };
    if (role === "assistant") {
      const split = splitThink(value);
      msg.content = split.content;
      if (split.reasoning !== undefined) msg.reasoning = split.reasoning;
    }
    const w = readWeight(t.weight, `${p}.weight`, ctx);
    if (w === null) return undefined;
    if (w !== undefined) msg.weight = w;
    messages.push(msg);
    paths.push(p);
  }
  const tools = rec.tools !== undefined ? readTools(rec.tools, "tools", ctx) : undefined;
  if (ctx.issues.length) return undefined;
  return { messages, paths, tools };
}

function str(
  rec: Record<string, unknown>,
  key: string,
  ctx: Ctx,
  required: boolean,
): string | undefined | null {
  const v = rec[key];
  if (v === undefined || v === null) {
    if (required) {
      ctx.add(
        "missing_field",
        key,
        `expected a string field "${key}", it is ${v === null ? "null" : "missing"}`,
      );
      return null;
    }
    return undefined;
  }
  if (typeof v !== "string") {
    ctx.add("wrong_type", key, `expected a string, got ${typeName(v)} ${show(v)}`);
    return null;
  }
  return v;
}

function assistantMsg(content: string, reasoning?: string): Message {
  if (reasoning !== undefined) return { role: "assistant", content, reasoning };
  const split = splitThink(content);
  const msg: Message = { role: "assistant", content: split.content };
  if (split.reasoning !== undefined) msg.reasoning = split.reasoning;
  return msg;
}

function adaptAlpaca(
  rec: Record<string, unknown>,
  ctx: Ctx,
): { messages: Message[]; paths: string[] } | undefined {
  const instruction = str(rec, "instruction", ctx, true);
  const input = str(rec, "input", ctx, false);
  const output = str(rec, "output", ctx, true);
  const system = str(rec, "system", ctx, false);
  if (instruction === null || input === null || output === null || system === null) return undefined;
  const messages: Message[] = [];
  const paths: string[] = [];
  if (system) {
    messages.push({ role: "system", content: system });
    paths.push("system");
  }
  const history = rec.history;
  if (history !== undefined && history !== null) {
    if (!Array.isArray(history)) {
      ctx.add(
        "wrong_type",
        "history",
        `expected an array of [question, answer] pairs, got ${typeName(history)}`,
      );
      return undefined;
    }
    for (let i = 0; i < history.length; i++) {
      const h = history[i];
      if (!Array.isArray(h) || h.length !== 2 || typeof h[0] !== "string" || typeof h[1] !== "string") {
        ctx.add(
          "wrong_type",
          `history[${i}]`,
          `expected a [question, answer] pair of strings, got ${show(h)}`,
        );
        return undefined;
      }
      messages.push({ role: "user", content: h[0] }, assistantMsg(h[1]));
      paths.push(`history[${i}][0]`, `history[${i}][1]`);
    }
  }
  messages.push({ role: "user", content: input ? `${instruction}\n${input}` : (instruction as string) });
  paths.push("instruction");
  messages.push(assistantMsg(output as string));
  paths.push("output");
  return { messages, paths };
}

function adaptColumns(
  rec: Record<string, unknown>,
  cols: ColumnMap,
  ctx: Ctx,
): { messages: Message[]; paths: string[]; tools?: Tool[] } | undefined {
  const user = str(rec, cols.user, ctx, true);
  const answer = str(rec, cols.assistant, ctx, true);
  const system = cols.system ? str(rec, cols.system, ctx, false) : undefined;
  const reasoning = cols.reasoning ? str(rec, cols.reasoning, ctx, false) : undefined;
  if (user === null || answer === null || system === null || reasoning === null) return undefined;
  const messages: Message[] = [];
  const paths: string[] = [];
  if (system) {
    messages.push({ role: "system", content: system });
    paths.push(cols.system as string);
  }
  messages.push({ role: "user", content: user as string });
  paths.push(cols.user);
  messages.push(assistantMsg(answer as string, reasoning || undefined));
  paths.push(cols.assistant);
  const tools =
    cols.tools && rec[cols.tools] !== undefined ? readTools(rec[cols.tools], cols.tools, ctx) : undefined;
  if (ctx.issues.length) return undefined;
  return { messages, paths, tools };
}

/** prompt: a string or a message list; chosen/rejected: a string, an assistant message, or a list ending in one. */
function adaptPreference(rec: Record<string, unknown>, ctx: Ctx): PreferencePair | undefined {
  let prompt: Message[];
  if (typeof rec.prompt === "string") prompt = [{ role: "user", content: rec.prompt }];
  else if (Array.isArray(rec.prompt)) {
    const r = adaptOpenAI({ messages: rec.prompt }, ctx);
    if (!r) {
      for (const i of ctx.issues) i.path = i.path.replace(/^messages/, "prompt");
      return undefined;
    }
    prompt = r.messages;
  } else {
    ctx.add("wrong_type", "prompt", `expected a string or an array of messages, got ${typeName(rec.prompt)}`);
    return undefined;
  }
  const answer = (key: "chosen" | "rejected"): Message | undefined => {
    const v = rec[key];
    if (typeof v === "string") return assistantMsg(v);
    const list = Array.isArray(v) ? v : isObj(v) ? [v] : null;
    if (!list || list.length === 0) {
      ctx.add("wrong_type", key, `expected a string or an assistant message, got ${typeName(v)}`);
      return undefined;
    }
    const r = adaptOpenAI({ messages: list }, ctx);
    if (!r) {
      for (const i of ctx.issues) i.path = i.path.replace(/^messages/, key);
      return undefined;
    }
    const last = r.messages[r.messages.length - 1];
    if (last.role !== "assistant") {
      ctx.add("role_order", key, `expected the ${key} answer to be an assistant message, got "${last.role}"`);
      return undefined;
    }
    return last;
  };
  const chosen = answer("chosen");
  const rejected = chosen ? answer("rejected") : undefined;
  if (!chosen || !rejected) return undefined;
  if (chosen.content === rejected.content && chosen.reasoning === rejected.reasoning) {
    ctx.add("preference_same", "rejected", "chosen and rejected answers are identical");
    return undefined;
  }
  const tools = rec.tools !== undefined ? readTools(rec.tools, "tools", ctx) : undefined;
  if (ctx.issues.length) return undefined;
  const pair: PreferencePair = { prompt, chosen, rejected, source: ctx.source };
  if (tools) pair.tools = tools;
  return pair;
}

/** Turn one raw record into its typed form. Structural checks (role order, tool names…) come after, in validate.ts. */
export function adaptRecord(rec: unknown, source: string, opts: AdaptOptions = {}): Adapted {
  const ctx = new Ctx(source);
  const fail = (): Adapted => ({ kind: "invalid", issues: ctx.issues });
  if (!isObj(rec)) {
    ctx.add("wrong_type", "", `expected a JSON object per record, got ${typeName(rec)} ${show(rec)}`);
    return fail();
  }
  const format = opts.format ?? (opts.columns ? "columns" : detectFormat(rec));
  if (format === null) {
    ctx.add(
      "unknown_format",
      "",
      `no known format: expected "messages" (openai), "conversations" (sharegpt), "instruction"+"output" (alpaca), "chosen"+"rejected" (preference) or "text"; keys are ${Object.keys(rec).slice(0, 10).join(", ") || "none"}. Pass a column mapping for other tables`,
    );
    return fail();
  }
  if (format === "text") {
    if (typeof rec.text !== "string" || rec.text.trim() === "") {
      ctx.add(
        rec.text === undefined ? "missing_field" : "empty_content",
        "text",
        `expected non-empty text, got ${show(rec.text)}`,
      );
      return fail();
    }
    return { kind: "text", value: { text: rec.text, source } };
  }
  if (format === "preference") {
    const pair = adaptPreference(rec, ctx);
    return pair ? { kind: "preference", value: pair } : fail();
  }
  let r: { messages: Message[]; paths: string[]; tools?: Tool[] } | undefined;
  if (format === "openai") r = adaptOpenAI(rec, ctx);
  else if (format === "sharegpt") r = adaptShareGPT(rec, ctx);
  else if (format === "alpaca") r = adaptAlpaca(rec, ctx);
  else {
    if (!opts.columns) {
      ctx.add("config", "", "format columns needs a column mapping {user, assistant, system?}");
      return fail();
    }
    r = adaptColumns(rec, opts.columns, ctx);
  }
  if (!r) return fail();
  if (r.messages.length === 0) {
    ctx.add(
      "empty_conversation",
      format === "sharegpt" ? "conversations" : "messages",
      "the conversation has no messages",
    );
    return fail();
  }
  const conv: Conversation = { messages: r.messages, source };
  if (r.tools?.length) conv.tools = r.tools;
  const thinking = typeof rec.thinking === "boolean" ? rec.thinking : opts.thinking;
  if (thinking !== undefined) conv.thinking = thinking;
  return { kind: "conversation", value: conv, paths: r.paths };
}
