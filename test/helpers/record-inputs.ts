// Inputs of test/prepare-records-stream.test.ts (also run against older code to take its output hashes).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fineTomeRecord } from "../../bench/prepare/generate.ts";

const lines = (rows: unknown[]) => `${rows.map((r) => JSON.stringify(r)).join("\n")}\n`;

/** 600 preference pairs in every accepted shape, 250 plain texts, 40 conversations; deterministic. */
export function writeRecordInputs(d: string): void {
  const text = (i: number, seed: number) =>
    (fineTomeRecord(i, seed) as { conversations: { value: string }[] }).conversations.map((m) => m.value);
  const prefs: unknown[] = [];
  for (let i = 0; i < 600; i++) {
    const [q, a, b = `${a.slice(0, 40)} — not quite.`] = text(i, 31);
    const tools = [
      {
        type: "function",
        function: {
          name: "refund_status",
          description: "Where a refund is",
          parameters: { type: "object", properties: { order: { type: "string" } }, required: ["order"] },
        },
      },
    ];
    if (i % 4 === 0) prefs.push({ prompt: q, chosen: a, rejected: b });
    else if (i % 4 === 1)
      prefs.push({
        prompt: [
          { role: "system", content: "You are TunaPay support." },
          { role: "user", content: q },
        ],
        chosen: { role: "assistant", content: `<think>\nCheck the rule.\n</think>\n${a}` },
        rejected: { role: "assistant", content: b },
      });
    else if (i % 4 === 2)
      prefs.push({
        prompt: [{ role: "user", content: `Order A${i}: ${q.slice(0, 80)}` }],
        chosen: {
          role: "assistant",
          content: "",
          tool_calls: [
            { type: "function", function: { name: "refund_status", arguments: `{"order":"A${i}"}` } },
          ],
        },
        rejected: { role: "assistant", content: b },
        tools,
      });
    else
      prefs.push({
        prompt: `退款 ${i} 多久到账？${q.slice(0, 30)}`,
        chosen: "一般 3–5 个工作日。",
        rejected: `${b}\u2028`,
      });
  }
  writeFileSync(join(d, "pref.jsonl"), lines(prefs));
  const texts: unknown[] = [];
  for (let i = 0; i < 250; i++) texts.push({ text: text(i, 32).join("\n\n"), id: `doc-${i}` });
  writeFileSync(join(d, "text.jsonl"), lines(texts));
  const convs: unknown[] = [];
  for (let i = 0; i < 40; i++) convs.push(fineTomeRecord(i, 33));
  writeFileSync(join(d, "chat.jsonl"), lines(convs));
}
