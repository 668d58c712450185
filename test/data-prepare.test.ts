import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { Deduplicator, detectLanguage, filterReason } from "../src/data/clean.ts";
import type { Conversation } from "../src/data/conversation.ts";
import { mixSources, Rng, splitItems } from "../src/data/mix.ts";
import { prepareConversations } from "../src/data/prepare.ts";

const tmp = mkdtempSync(path.join(tmpdir(), "tuna-prepare-"));
const conv = (user: string, answer: string): Conversation => ({
  source: "t",
  messages: [
    { role: "user", content: user },
    { role: "assistant", content: answer },
  ],
});

describe("dedup", () => {
  it("removes exact (after normalisation) and near duplicates, keeps distinct texts", () => {
    const d = new Deduplicator();
    const base =
      "My card was charged twice for the same order yesterday evening and I would like one of the two payments refunded to my account please.";
    expect(d.check(conv(base, "We will refund the second charge within 3 days."))).toBe("new");
    expect(d.check(conv(base.toUpperCase(), "We will refund the second charge, within 3 days!"))).toBe(
      "exact",
    );
    expect(
      d.check(conv(base.replace("yesterday", "last"), "We will refund the second charge within 3 days.")),
    ).toBe("near");
    expect(
      d.check(conv("How do I change the PIN of my card?", "Open the app, go to Card, then Change PIN.")),
    ).toBe("new");
    expect(
      d.check(conv("我的银行卡被重复扣款了，请帮我退款。", "好的，我们会在三个工作日内退回重复的款项。")),
    ).toBe("new");
    expect(
      d.check(conv("我的银行卡被重复扣款了，请帮我退款！", "好的，我们会在三个工作日内退回重复的款项。")),
    ).toBe("exact");
    const nearOff = new Deduplicator({ near: false });
    nearOff.check(conv(base, "x"));
    expect(nearOff.check(conv(base.replace("yesterday", "last"), "x"))).toBe("new");
  });
});

describe("filters", () => {
  it("language by script, turn counts, token hook", () => {
    expect(detectLanguage("我想查询一下我的账户余额")).toBe("zh");
    expect(detectLanguage("カードが届きません")).toBe("ja");
    expect(detectLanguage("카드가 도착하지 않았어요")).toBe("ko");
    expect(detectLanguage("Where is my card? 卡")).toBe("latin");
    expect(detectLanguage("Где моя карта?")).toBe("cyrillic");
    expect(detectLanguage("12345 !!")).toBe(null);
    const c = conv("我的卡丢了", "我们已为您冻结该卡。");
    expect(filterReason(c, { languages: ["zh"] })).toBe(null);
    expect(filterReason(c, { languages: ["latin"] })).toBe("language");
    expect(filterReason(c, { minTurns: 2 })).toBe("too_few_turns");
    expect(filterReason(c, { maxTokens: 5 }, (x) => x.messages.map((m) => m.content).join("").length)).toBe(
      "too_many_tokens",
    );
    expect(filterReason(c, { maxTokens: 50 }, (x) => x.messages.map((m) => m.content).join("").length)).toBe(
      null,
    );
  });
});

describe("split and mix", () => {
  it("seeded PRNG is deterministic and roughly uniform", () => {
    const a = new Rng("s");
    const b = new Rng("s");
    const xs = Array.from({ length: 10000 }, () => a.next());
    expect(xs).toEqual(Array.from({ length: 10000 }, () => b.next()));
    expect(new Rng("t").next()).not.toBe(xs[0]);
    const mean = xs.reduce((p, q) => p + q, 0) / xs.length;
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.02);
  });

  it("splits by fraction or count", () => {
    const items = Array.from({ length: 100 }, (_, i) => i);
    const s1 = splitItems(items, { fraction: 0.1 }, "x");
    expect(s1.validation).toHaveLength(10);
    expect(s1.train).toHaveLength(90);
    expect(new Set([...s1.train, ...s1.validation]).size).toBe(100);
    expect(splitItems(items, { count: 7 }, "x").validation).toHaveLength(7);
    expect(splitItems(items, { fraction: 0.1 }, "x")).toEqual(s1);
    expect(splitItems(items, { fraction: 0.1 }, "y").validation).not.toEqual(s1.validation);
  });

  it("mixes to ratios by samples (down-sampling) and by tokens, up-sampling when allowed", () => {
    const a = Array.from({ length: 300 }, (_, i) => `a${i}`);
    const b = Array.from({ length: 400 }, (_, i) => `b${i}`);
    const m = mixSources(
      [
        { name: "a", items: a, ratio: 0.75 },
        { name: "b", items: b, ratio: 0.25 },
      ],
      { seed: "1", by: "samples" },
    );
    // Largest mix with no up-sampling: a limits it to 300 / 0.75 = 400 → 300 a + 100 b.
    expect(m.items).toHaveLength(400);
    expect(m.items.filter((x) => x.startsWith("a"))).toHaveLength(300);
    expect(new Set(m.items).size).toBe(400);
    const again = mixSources(
      [
        { name: "a", items: a, ratio: 0.75 },
        { name: "b", items: b, ratio: 0.25 },
      ],
      { seed: "1", by: "samples" },
    );
    expect(again.items).toEqual(m.items);
    expect(() =>
      mixSources(
        [
          { name: "a", items: a, ratio: 3 },
          { name: "b", items: b, ratio: 1 },
        ],
        { seed: "1", by: "samples", total: 1000 },
      ),
    ).toThrow(/needs 750/);
    const up = mixSources(
      [
        { name: "a", items: a, ratio: 3 },
        { name: "b", items: b, ratio: 1 },
      ],
      { seed: "1", by: "samples", total: 1000, upsample: true },
    );
    expect(up.items.filter((x) => x.startsWith("a"))).toHaveLength(750);
    expect(new Set(up.items.filter((x) => x.startsWith("a"))).size).toBe(300);
    // By tokens: a items are 10 tokens, b items 1 token; 50/50 by tokens.
    const t = mixSources(
      [
        { name: "a", items: a, ratio: 1 },
        { name: "b", items: b, ratio: 1 },
      ],
      {
        seed: "1",
        by: "tokens",
        size: (x) => (x.startsWith("a") ? 10 : 1),
      },
    );
    expect(t.perSource.b.units).toBe(400);
    expect(t.perSource.a.units).toBe(400);
    expect(t.perSource.a.taken).toBe(40);
  });
});

describe("prepareConversations", () => {
  it("reads, redacts, de-duplicates, filters, splits and mixes, deterministically", async () => {
    const reasoning = path.join(tmp, "math.csv");
    const rows = ["problem,generated_solution,expected_answer"];
    for (let i = 0; i < 60; i++)
      rows.push(`"What is ${i} + ${i}?","<think>\nAdd ${i} and ${i}.\n</think>\nIt is ${2 * i}.",${2 * i}`);
    rows.push('"What is 0 + 0?","<think>\nAdd 0 and 0.\n</think>\nIt is 0.",0'); // exact duplicate
    writeFileSync(reasoning, `${rows.join("\n")}\n`);
    const chat = path.join(tmp, "chat.jsonl");
    const lines: string[] = [];
    for (let i = 0; i < 40; i++) {
      lines.push(
        JSON.stringify({
          conversations: [
            {
              from: "human",
              value: `Hi, my phone is 1391234${String(1000 + i)} and I need help with case ${i}`,
            },
            { from: "gpt", value: `Sure, looking at case ${i}.` },
          ],
        }),
      );
    }
    lines.push("{broken");
    lines.push(
      JSON.stringify({
        conversations: [
          { from: "human", value: "Привет, где моя карта?" },
          { from: "gpt", value: "Карта в пути." },
        ],
      }),
    );
    writeFileSync(chat, `${lines.join("\n")}\n`);
    const config = {
      seed: 7,
      sources: [
        {
          path: reasoning,
          name: "reasoning",
          columns: { user: "problem", assistant: "generated_solution" },
          ratio: 0.75,
          thinking: true,
          validation: { count: 5 },
        },
        { path: chat, name: "chat", ratio: 0.25, validation: { fraction: 0.1 } },
      ],
      // Near-dedup off: the templated chat lines below are (rightly) near-duplicates of each other.
      clean: { filters: { languages: ["latin" as const] }, dedup: { near: false } },
    };
    const p = await prepareConversations(config);
    const r = p.report.toJSON();
    expect(r.total).toBe(61 + 42);
    expect(r.valid).toBe(61 + 41);
    expect(r.skippedByReason.invalid_json.count).toBe(1);
    expect(r.stages.dedup).toEqual({ exact: 1 });
    expect(r.stages.filter).toEqual({ language: 1 });
    expect(r.stages.pii).toEqual({ phone: 40 });
    expect(r.stages.split).toEqual({ "reasoning.validation": 5, "chat.validation": 4 });
    // Train: reasoning 55 and chat 36 available; 0.75/0.25 → limited by chat... 55/0.75 = 73.3, 36/0.25 = 144 → 73 total.
    expect(p.train.filter((c) => c.thinking === true)).toHaveLength(55);
    expect(p.train.filter((c) => c.thinking === undefined)).toHaveLength(18);
    expect(p.validation).toHaveLength(9);
    expect(p.train.some((c) => c.messages[0].content.includes("[PHONE]"))).toBe(true);
    expect(p.train.every((c) => !/1391234\d{4}/.test(c.messages[0].content))).toBe(true);
    const math = p.train.find((c) => c.thinking);
    expect(math?.messages[1].reasoning).toMatch(/^Add \d+ and \d+\.$/);
    const again = await prepareConversations(config);
    expect(again.train.map((c) => c.source)).toEqual(p.train.map((c) => c.source));
    expect(again.validation.map((c) => c.source)).toEqual(p.validation.map((c) => c.source));
    const other = await prepareConversations({ ...config, seed: 8 });
    expect(other.train.map((c) => c.source)).not.toEqual(p.train.map((c) => c.source));
  });

  it("rejects bad configs with every problem named", async () => {
    await expect(
      prepareConversations({
        sources: [{ path: "x.jsonl", ratio: -1, format: "columns" }],
        mix: { by: "bytes" },
      } as never),
    ).rejects.toThrow(/data\.sources\.0\.ratio[\s\S]*data\.mix\.by/);
    await expect(
      prepareConversations({ sources: [{ path: "x.jsonl" }], mix: { by: "tokens" } }),
    ).rejects.toThrow(/token counter/);
  });
});
