// BFCL (Berkeley Function Calling Leaderboard) → tool-calling conversations.
// A case: {id, question: [[{role, content}]], function: [{name, description, parameters}]} with Python-style
// types; its answer (in <name>.answers.jsonl): {id, ground_truth: [{fn: {arg: [allowed values]}}]}. The first
// allowed value of each argument becomes the call's argument ("" first = the argument is omitted).
// `irrelevance` cases have no answer: no tool fits, so the assistant says so and calls nothing.
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { TunaError } from "../../errors.ts";
import type { Tool } from "../conversation.ts";
import { type ConvertReport, type OpenAIMessage, type OpenAIRecord, skip } from "./common.ts";

const TYPE_MAP: Record<string, string | null> = {
  dict: "object",
  object: "object",
  float: "number",
  number: "number",
  integer: "integer",
  int: "integer",
  string: "string",
  str: "string",
  boolean: "boolean",
  bool: "boolean",
  array: "array",
  list: "array",
  tuple: "array",
  any: null,
};

/** Python-style BFCL schema → JSON Schema (recursively through properties, items, additionalProperties). */
export function bfclToJsonSchema(schema: unknown, where: string): Record<string, unknown> {
  if (typeof schema !== "object" || schema === null || Array.isArray(schema)) {
    throw new TunaError("CONVERT_BFCL", `expected a schema object, got ${JSON.stringify(schema)}`, { where });
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === "type") {
      if (typeof v !== "string" || !(v in TYPE_MAP)) {
        throw new TunaError("CONVERT_BFCL", `unknown BFCL type ${JSON.stringify(v)}`, {
          where,
          hint: `known: ${Object.keys(TYPE_MAP).join(", ")}`,
        });
      }
      const t = TYPE_MAP[v];
      if (t !== null) out.type = t;
    } else if (k === "properties" && v && typeof v === "object") {
      const props: Record<string, unknown> = {};
      for (const [pk, pv] of Object.entries(v)) props[pk] = bfclToJsonSchema(pv, `${where}.properties.${pk}`);
      out.properties = props;
    } else if ((k === "items" || k === "additionalProperties") && v && typeof v === "object") {
      out[k] = bfclToJsonSchema(v, `${where}.${k}`);
    } else out[k] = v;
  }
  return out;
}

function toTool(fn: Record<string, unknown>, where: string): Tool {
  const tool: Tool = { type: "function", function: { name: String(fn.name) } };
  if (typeof fn.description === "string") tool.function.description = fn.description;
  const params = bfclToJsonSchema(fn.parameters ?? { type: "dict", properties: {} }, `${where}.parameters`);
  params.type = "object";
  params.properties ??= {};
  tool.function.parameters = params;
  return tool;
}

async function readJsonlFile(file: string): Promise<{ rec: Record<string, unknown>; line: number }[]> {
  const text = await readFile(file, "utf8");
  const out: { rec: Record<string, unknown>; line: number }[] = [];
  text.split("\n").forEach((l, i) => {
    if (l.trim() === "") return;
    try {
      out.push({ rec: JSON.parse(l), line: i + 1 });
    } catch (e) {
      throw new TunaError("CONVERT_BFCL", `not valid JSON (${(e as Error).message})`, {
        where: `${file}:${i + 1}`,
      });
    }
  });
  return out;
}

const noToolReply = (names: string[]) =>
  `I'm sorry, but none of the tools I have can help with this request (I can use: ${names.join(", ")}). ` +
  "If you can rephrase it or tell me more about what you need, I'll do my best to help.";

/** BFCL files to convert: a directory → every case file (not *.answers.jsonl); a file → itself. */
async function caseFiles(input: string): Promise<string[]> {
  const st = await stat(input).catch(() => null);
  if (!st) throw new TunaError("CONVERT_INPUT", `no such file or directory "${input}"`);
  if (st.isFile()) return [input];
  return (await readdir(input))
    .filter((f) => f.endsWith(".jsonl") && !f.endsWith(".answers.jsonl"))
    .sort()
    .map((f) => path.join(input, f));
}

export async function* convertBfcl(input: string, report: ConvertReport): AsyncGenerator<OpenAIRecord> {
  for (const file of await caseFiles(input)) {
    const base = path.basename(file, ".jsonl");
    const irrelevance = base.startsWith("irrelevance");
    const answersFile = path.join(path.dirname(file), `${base}.answers.jsonl`);
    const answers = new Map<string, unknown>();
    if (!irrelevance) {
      const st = await stat(answersFile).catch(() => null);
      if (!st) {
        throw new TunaError("CONVERT_BFCL", `no ground truth beside ${file}`, {
          where: answersFile,
          hint: "each BFCL case file needs its <name>.answers.jsonl (only irrelevance cases have none)",
        });
      }
      for (const { rec } of await readJsonlFile(answersFile)) answers.set(String(rec.id), rec.ground_truth);
    }
    for (const { rec, line } of await readJsonlFile(file)) {
      const where = `${file}:${line}`;
      const id = String(rec.id);
      const fns = Array.isArray(rec.function) ? (rec.function as Record<string, unknown>[]) : [];
      let tools: Tool[];
      try {
        tools = fns.map((fn, i) => toTool(fn, `${where} function[${i}]`));
      } catch (e) {
        skip(report, "schema", (e as Error).message);
        continue;
      }
      const messages: OpenAIMessage[] = [];
      for (const turn of (rec.question as unknown[][]) ?? []) {
        for (const m of turn as { role: string; content: string }[]) {
          if (m.role === "system" || m.role === "user") messages.push({ role: m.role, content: m.content });
          else {
            skip(report, "question_role", `${where}: role ${m.role}`);
          }
        }
      }
      if (!messages.some((m) => m.role === "user")) {
        skip(report, "no_question", where);
        continue;
      }
      if (irrelevance) {
        messages.push({ role: "assistant", content: noToolReply(tools.map((t) => t.function.name)) });
        yield { id, messages, tools };
        continue;
      }
      const truth = answers.get(id);
      if (!Array.isArray(truth) || truth.length === 0) {
        skip(report, "no_answer", `${where}: no ground truth for ${id}`);
        continue;
      }
      const calls = [];
      for (const [k, g] of (truth as Record<string, Record<string, unknown[]>>[]).entries()) {
        const [name, args] = Object.entries(g)[0];
        const callArgs: Record<string, unknown> = {};
        for (const [arg, allowed] of Object.entries(args)) {
          if (!Array.isArray(allowed) || allowed.length === 0) continue;
          if (allowed[0] === "") continue; // "" first: the argument may be (and here is) omitted
          callArgs[arg] = allowed[0];
        }
        calls.push({
          id: `call_${k}`,
          type: "function" as const,
          function: { name, arguments: JSON.stringify(callArgs) },
        });
      }
      messages.push({ role: "assistant", content: "", tool_calls: calls });
      yield { id, messages, tools };
    }
  }
}
