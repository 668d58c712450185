import { mkdtempSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { convertBanking77 } from "../src/data/convert/banking77.ts";
import { bfclToJsonSchema, convertBfcl } from "../src/data/convert/bfcl.ts";
import { newConvertReport, type OpenAIRecord, writeJsonl } from "../src/data/convert/common.ts";
import { convertSgd } from "../src/data/convert/sgd.ts";
import { validateFiles, validRecords } from "../src/data/validate.ts";

const tmp = mkdtempSync(path.join(tmpdir(), "tuna-convert-"));

async function convert(fn: typeof convertBfcl, input: string, name: string) {
  const report = newConvertReport();
  const out = path.join(tmp, `${name}.jsonl`);
  await writeJsonl(out, fn(input, report), report);
  const records = (await readFile(out, "utf8"))
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as OpenAIRecord);
  return { report, out, records };
}

describe("bfcl", () => {
  it("maps Python-style types to JSON Schema", () => {
    expect(
      bfclToJsonSchema(
        {
          type: "dict",
          properties: {
            a: { type: "float" },
            b: { type: "tuple", items: { type: "integer" } },
            c: { type: "any", description: "x" },
            d: { type: "list", items: { type: "dict", properties: { e: { type: "boolean" } } } },
          },
          required: ["a"],
        },
        "t",
      ),
    ).toEqual({
      type: "object",
      properties: {
        a: { type: "number" },
        b: { type: "array", items: { type: "integer" } },
        c: { description: "x" },
        d: { type: "array", items: { type: "object", properties: { e: { type: "boolean" } } } },
      },
      required: ["a"],
    });
    expect(() => bfclToJsonSchema({ type: "complex" }, "t")).toThrow(/unknown BFCL type "complex"/);
  });

  it("converts all four categories into valid tool-calling conversations", async () => {
    const { report, out, records } = await convert(convertBfcl, "../shared/data/bfcl", "bfcl");
    expect(report.written).toBe(400 + 200 + 258 + 240);
    expect(report.skipped).toEqual({});
    const byId = new Map(records.map((r) => [r.id, r]));
    const tri = byId.get("simple_python_0");
    const call = tri?.messages[1];
    expect(call?.role === "assistant" && call.tool_calls?.[0].function).toEqual({
      name: "calculate_triangle_area",
      arguments: JSON.stringify({ base: 10, height: 5, unit: "units" }),
    });
    expect(tri?.tools?.[0].function.parameters).toMatchObject({
      type: "object",
      required: ["base", "height"],
    });
    // "" first among the allowed values: the argument is omitted.
    const hyp = byId.get("simple_python_2")?.messages[1];
    expect(hyp?.role === "assistant" && JSON.parse(hyp.tool_calls?.[0].function.arguments ?? "")).toEqual({
      x: 4,
      y: 5,
    });
    const irr = byId.get("irrelevance_0");
    expect(irr?.messages.at(-1)).toMatchObject({ role: "assistant" });
    expect(irr?.messages.at(-1)?.content).toMatch(/none of the tools/);
    expect(irr?.messages.at(-1)).not.toHaveProperty("tool_calls");
    // No Python type survives.
    expect(JSON.stringify(records)).not.toMatch(/"type":"(dict|float|tuple|any|list)"/);
    const v = await validateFiles([out]);
    expect(v.valid).toBe(1098);
    expect(v.skipped).toBe(0);
  });
});

describe("sgd", () => {
  it("turns service calls and results into tool calls and tool messages", async () => {
    const { report, out, records } = await convert(convertSgd, "../shared/data/sgd", "sgd");
    expect(report.written).toBe(128);
    const balance = records.flatMap((r) =>
      r.messages.flatMap((m) =>
        m.role === "assistant" && m.tool_calls
          ? m.tool_calls.filter((c) => c.function.name === "CheckBalance")
          : [],
      ),
    );
    expect(balance.length).toBe(194); // every Banks_1 service_call of the file
    expect(Object.keys(JSON.parse(balance[0].function.arguments))).toEqual(["account_type"]);
    // The result follows as a tool message answering that call's id.
    const withCall = records.find((r) =>
      r.messages.some((m) => m.role === "assistant" && m.tool_calls?.[0].function.name === "CheckBalance"),
    );
    const i =
      withCall?.messages.findIndex(
        (m) => m.role === "assistant" && m.tool_calls?.[0].function.name === "CheckBalance",
      ) ?? -1;
    const callMsg = withCall?.messages[i];
    expect(withCall?.messages[i + 1]).toMatchObject({
      role: "tool",
      name: "CheckBalance",
      tool_call_id: callMsg?.role === "assistant" ? callMsg.tool_calls?.[0].id : "?",
    });
    expect(JSON.parse(withCall?.messages[i + 1].content ?? "")[0]).toHaveProperty("balance");
    const tool = records[0].tools?.find((t) => t.function.name === "TransferMoney");
    expect(tool?.function.parameters).toMatchObject({
      type: "object",
      required: ["account_type", "amount", "recipient_account_name"],
      properties: {
        account_type: { type: "string", enum: ["checking", "savings"] },
        recipient_account_type: { default: "checking" },
      },
    });
    // Every call is answered by a tool message with its id, and the dialogue ends with the assistant.
    for await (const r of validRecords([out])) {
      if (r.kind !== "conversation") continue;
      expect(r.value.messages.at(-1)?.role).toBe("assistant");
    }
    const v = await validateFiles([out]);
    expect(v.valid).toBe(128);
  });
});

describe("banking77", () => {
  it("makes one routing call per message, intent within the 77 categories", async () => {
    const { report, out, records } = await convert(convertBanking77, "../shared/data/banking77", "banking77");
    expect(report.written).toBe(13083);
    const cats = JSON.parse(await readFile("../shared/data/banking77/categories.json", "utf8")) as string[];
    expect(cats).toHaveLength(77);
    expect(records[0].messages[0]).toEqual({ role: "user", content: "I am still waiting on my card?" });
    const a = records[0].messages[1];
    expect(a.role === "assistant" && JSON.parse(a.tool_calls?.[0].function.arguments ?? "")).toEqual({
      intent: "card_arrival",
    });
    const intents = new Set(
      records.map((r) => {
        const m = r.messages[1];
        return m.role === "assistant" ? JSON.parse(m.tool_calls?.[0].function.arguments ?? "").intent : null;
      }),
    );
    expect(intents.size).toBe(77);
    const v = await validateFiles([out]);
    expect(v.valid).toBe(13083);
  });
});
