// BANKING77 → routing conversations. Each customer message becomes a user turn, and the assistant answers
// with one call of a `route_to_intent` tool whose `intent` parameter is an enum of the 77 categories. A tool
// call (not a plain-text label) because that is how a support bot hands a case to the right queue, and the
// enum lets validation and evaluation check the label against the schema.
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { TunaError } from "../../errors.ts";
import type { Tool } from "../conversation.ts";
import { readCsv } from "../readers.ts";
import { type ConvertReport, type OpenAIRecord, skip } from "./common.ts";

export function routingTool(categories: string[]): Tool {
  return {
    type: "function",
    function: {
      name: "route_to_intent",
      description: "Route the customer's message to the support queue of its intent.",
      parameters: {
        type: "object",
        properties: {
          intent: { type: "string", enum: categories, description: "The intent of the customer's message." },
        },
        required: ["intent"],
      },
    },
  };
}

export async function* convertBanking77(input: string, report: ConvertReport): AsyncGenerator<OpenAIRecord> {
  const st = await stat(input).catch(() => null);
  if (!st) throw new TunaError("CONVERT_INPUT", `no such file or directory "${input}"`);
  const dir = st.isDirectory() ? input : path.dirname(input);
  const files = st.isDirectory() ? ["train.csv", "test.csv"].map((f) => path.join(dir, f)) : [input];
  const catFile = path.join(dir, "categories.json");
  const categories = JSON.parse(
    await readFile(catFile, "utf8").catch(() => {
      throw new TunaError("CONVERT_BANKING77", "categories.json not found beside the CSV files", {
        where: catFile,
      });
    }),
  ) as string[];
  const known = new Set(categories);
  const tool = routingTool(categories);
  for (const file of files) {
    const split = path.basename(file, ".csv");
    for await (const item of readCsv(file)) {
      if (item.kind === "blank") continue;
      if (item.kind === "error") {
        skip(report, item.error.reason, `${item.source}: ${item.error.message}`);
        continue;
      }
      const rec = item.record as Record<string, string>;
      const text = rec.text?.trim();
      const category = rec.category?.trim();
      if (!text) {
        skip(report, "empty_text", item.source);
        continue;
      }
      if (!category || !known.has(category)) {
        skip(report, "unknown_category", `${item.source}: ${JSON.stringify(category)}`);
        continue;
      }
      const line = item.source.slice(item.source.lastIndexOf(":") + 1);
      yield {
        id: `banking77-${split}-${line}`,
        messages: [
          { role: "user", content: text },
          {
            role: "assistant",
            content: "",
            tool_calls: [
              {
                id: "call_0",
                type: "function",
                function: { name: "route_to_intent", arguments: JSON.stringify({ intent: category }) },
              },
            ],
          },
        ],
        tools: [tool],
      };
    }
  }
}
