// Structural checks on adapted records, and the streaming read → adapt → validate loop with its report.
import type { Conversation, Message, PreferencePair, Tool } from "./conversation.ts";
import { type Adapted, type AdaptOptions, adaptRecord } from "./formats.ts";
import { type ReadOptions, readAll } from "./readers.ts";
import { DataReport, type Issue } from "./report.ts";

const JSON_TYPES = new Set(["string", "number", "integer", "boolean", "object", "array", "null"]);
const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** A tool's parameters must be a JSON Schema object: type "object", `properties` an object of schemas, `required` ⊆ properties. */
export function checkToolSchema(tool: Tool, path: string): { path: string; message: string } | null {
  const params = tool.function.parameters;
  if (params === undefined) return null;
  if (params.type !== "object") {
    return {
      path: `${path}.function.parameters.type`,
      message: `expected "object", got ${JSON.stringify(params.type)}`,
    };
  }
  const props = params.properties ?? {};
  if (!isObj(props))
    return {
      path: `${path}.function.parameters.properties`,
      message: "expected an object of property schemas",
    };
  for (const [name, schema] of Object.entries(props)) {
    const p = `${path}.function.parameters.properties.${name}`;
    if (!isObj(schema))
      return { path: p, message: `expected a JSON Schema object, got ${JSON.stringify(schema)}` };
    const t = schema.type;
    const types = Array.isArray(t) ? t : t === undefined ? [] : [t];
    for (const x of types) {
      if (typeof x !== "string" || !JSON_TYPES.has(x)) {
        return {
          path: `${p}.type`,
          message: `expected a JSON Schema type (${[...JSON_TYPES].join(", ")}), got ${JSON.stringify(x)}`,
        };
      }
    }
  }
  const req = params.required;
  if (req !== undefined) {
    if (!Array.isArray(req) || req.some((r) => typeof r !== "string")) {
      return { path: `${path}.function.parameters.required`, message: "expected an array of property names" };
    }
    for (const r of req) {
      if (!(r in props)) {
        return {
          path: `${path}.function.parameters.required`,
          message: `"${r}" is required but not among the properties (${Object.keys(props).join(", ") || "none"})`,
        };
      }
    }
  }
  return null;
}

function checkTools(tools: Tool[] | undefined, source: string, issues: Issue[]): Set<string> | null {
  if (!tools) return null;
  const names = new Set<string>();
  tools.forEach((t, i) => {
    const bad = checkToolSchema(t, `tools[${i}]`);
    if (bad) issues.push({ reason: "tools_schema", source, ...bad });
    if (names.has(t.function.name)) {
      issues.push({
        reason: "tools_schema",
        source,
        path: `tools[${i}].function.name`,
        message: `tool "${t.function.name}" is defined twice`,
      });
    }
    names.add(t.function.name);
  });
  return names;
}

/**
 * Role order and content rules of a conversation we can train on:
 * system only first; then a user turn; a tool message answers a call of the assistant turn before it (by id
 * when ids are given); calls name tools that exist when tools are given; it ends with an assistant turn
 * that is trained (weight not 0); user and system content is not empty; an assistant turn says something.
 */
export function checkConversation(conv: Conversation, paths: string[] = []): Issue[] {
  const issues: Issue[] = [];
  const src = conv.source;
  const at = (i: number) => paths[i] ?? `messages[${i}]`;
  const add = (reason: string, path: string, message: string) =>
    issues.push({ reason, source: src, path, message });
  const toolNames = checkTools(conv.tools, src, issues);
  const msgs = conv.messages;
  let pendingIds: Set<string> | null = null; // ids of calls not yet answered
  let pendingCount = 0;
  let sawUser = false;
  msgs.forEach((m: Message, i) => {
    const p = at(i);
    if (m.role === "system") {
      if (i !== 0) add("role_order", `${p}.role`, "a system message may only come first");
      else if (m.content.trim() === "") add("empty_content", `${p}.content`, "system message is empty");
      return;
    }
    if (m.role === "user") {
      if (m.content.trim() === "") add("empty_content", `${p}.content`, "user message is empty");
      if (pendingCount > 0)
        add(
          "role_order",
          `${p}.role`,
          `${pendingCount} tool call(s) of the assistant turn before are not answered by tool messages`,
        );
      pendingIds = null;
      pendingCount = 0;
      sawUser = true;
      return;
    }
    if (!sawUser)
      add(
        "role_order",
        `${p}.role`,
        `the first message after system must be a user message, got "${m.role}"`,
      );
    if (m.role === "tool") {
      if (pendingCount <= 0) {
        add(
          "role_order",
          `${p}.role`,
          "a tool message must answer a tool call of the assistant turn before it",
        );
        return;
      }
      if (m.tool_call_id !== undefined && pendingIds && pendingIds.size > 0) {
        if (!pendingIds.has(m.tool_call_id)) {
          add(
            "role_order",
            `${p}.tool_call_id`,
            `no pending tool call has id "${m.tool_call_id}" (pending: ${[...pendingIds].join(", ")})`,
          );
          return;
        }
        pendingIds.delete(m.tool_call_id);
      }
      pendingCount--;
      return;
    }
    // assistant
    if (pendingCount > 0)
      add(
        "role_order",
        `${p}.role`,
        `${pendingCount} tool call(s) before this assistant turn are not answered`,
      );
    const calls = m.tool_calls ?? [];
    if (m.content.trim() === "" && calls.length === 0 && !m.reasoning) {
      add("empty_content", `${p}.content`, "assistant message has no content, reasoning or tool calls");
    }
    calls.forEach((c, k) => {
      if (toolNames && !toolNames.has(c.name)) {
        add(
          "unknown_tool",
          `${p}.tool_calls[${k}].function.name`,
          `calls "${c.name}", which is not among the tools (${[...toolNames].join(", ")})`,
        );
      }
    });
    pendingCount = calls.length;
    const ids = calls.map((c) => c.id).filter((x): x is string => x !== undefined);
    pendingIds = ids.length ? new Set(ids) : null;
  });
  const last = msgs[msgs.length - 1];
  if (last.role !== "assistant") {
    add(
      "no_final_assistant",
      `${at(msgs.length - 1)}.role`,
      `a sample must end with an assistant turn to train on, it ends with "${last.role}"`,
    );
  } else if (!msgs.some((m) => m.role === "assistant" && m.weight !== 0)) {
    add("nothing_to_train", "", "every assistant turn has weight 0: nothing to train on");
  }
  return issues;
}

export function checkPreference(pair: PreferencePair): Issue[] {
  const issues = checkConversation(
    { messages: [...pair.prompt, pair.chosen], tools: pair.tools, source: pair.source },
    [...pair.prompt.map((_, i) => `prompt[${i}]`), "chosen"],
  );
  const rej = checkConversation(
    { messages: [...pair.prompt, pair.rejected], tools: pair.tools, source: pair.source },
    [...pair.prompt.map((_, i) => `prompt[${i}]`), "rejected"],
  );
  return [...issues, ...rej.filter((i) => i.path.startsWith("rejected"))];
}

/** Adapt a raw record and check it: either a usable record or its issues. */
export function processRecord(rec: unknown, source: string, opts: AdaptOptions = {}): Adapted {
  const a = adaptRecord(rec, source, opts);
  if (a.kind === "conversation") {
    const issues = checkConversation(a.value, a.paths);
    if (issues.length) return { kind: "invalid", issues };
  } else if (a.kind === "preference") {
    const issues = checkPreference(a.value);
    if (issues.length) return { kind: "invalid", issues };
  }
  return a;
}

export interface ValidateOptions extends AdaptOptions, ReadOptions {
  strict?: boolean;
  maxExamples?: number;
}

export type ValidRecord = Exclude<Adapted, { kind: "invalid" }>;

/**
 * Stream records from files/dirs/globs, adapt and check each one, count everything in `report`.
 * Yields only valid records; invalid ones are counted by reason (or thrown on with `strict`).
 */
export async function* validRecords(
  inputs: string[],
  opts: ValidateOptions = {},
  report: DataReport = new DataReport({ strict: opts.strict, maxExamples: opts.maxExamples }),
): AsyncGenerator<ValidRecord> {
  for await (const item of readAll(inputs, opts)) {
    if (item.kind === "blank") {
      report.blankLines++;
      continue;
    }
    if (item.kind === "error") {
      report.reject([item.error]);
      continue;
    }
    const r = processRecord(item.record, item.source, opts);
    if (r.kind === "invalid") {
      report.reject(r.issues);
      continue;
    }
    report.accept(r.kind);
    yield r;
  }
}

/** Read and check everything, keeping nothing: the report (what `tuna data validate` prints). */
export async function validateFiles(inputs: string[], opts: ValidateOptions = {}): Promise<DataReport> {
  const report = new DataReport({ strict: opts.strict, maxExamples: opts.maxExamples });
  for await (const _ of validRecords(inputs, opts, report)) {
    // counted in the report
  }
  return report;
}
