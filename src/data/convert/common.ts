// Shared by the conversion recipes: the OpenAI-style record they write, and a JSONL writer.

import { once } from "node:events";
import { createWriteStream } from "node:fs";
import type { Tool } from "../conversation.ts";

/** What the recipes write: OpenAI chat format, tool-call arguments as JSON strings (what the API returns). */
export interface OpenAIRecord {
  id: string;
  messages: OpenAIMessage[];
  tools?: Tool[];
}

export type OpenAIMessage =
  | { role: "system" | "user"; content: string }
  | {
      role: "assistant";
      content: string;
      tool_calls?: { id: string; type: "function"; function: { name: string; arguments: string } }[];
    }
  | { role: "tool"; content: string; tool_call_id: string; name?: string };

export interface ConvertReport {
  written: number;
  /** Input items that could not be converted, by reason, with examples. */
  skipped: Record<string, { count: number; examples: string[] }>;
}

export function newConvertReport(): ConvertReport {
  return { written: 0, skipped: {} };
}

export function skip(r: ConvertReport, reason: string, example: string): void {
  if (!r.skipped[reason]) r.skipped[reason] = { count: 0, examples: [] };
  const s = r.skipped[reason];
  s.count++;
  if (s.examples.length < 5) s.examples.push(example);
}

export async function writeJsonl(
  file: string,
  records: AsyncIterable<OpenAIRecord> | Iterable<OpenAIRecord>,
  report: ConvertReport,
): Promise<void> {
  const out = createWriteStream(file);
  for await (const rec of records) {
    if (!out.write(`${JSON.stringify(rec)}\n`)) await once(out, "drain");
    report.written++;
  }
  out.end();
  await once(out, "finish");
}
