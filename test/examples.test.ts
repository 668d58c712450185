// The payment-support sample set (examples/payment-support): every file is well-formed, every tool call is
// valid against tools.json, fees in the reasoning are computed right, and the generator is deterministic.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseConfig, readYaml } from "../src/config/load.ts";
import { RunConfig } from "../src/config/schema.ts";

const DIR = "examples/payment-support";
const TRAIN_FILES = ["style.jsonl", "knowledge.jsonl", "reasoning.jsonl", "tools.jsonl"];
const EVAL_FILES = ["eval/questions.jsonl", "eval/tool_cases.jsonl", "eval/tool_answers.jsonl"];

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Schema = { [k: string]: Json };
interface ToolCall {
  id: string;
  type: string;
  function: { name: string; arguments: string };
}
interface Msg {
  role: string;
  content: string;
  reasoning_content?: string;
  tool_calls?: ToolCall[];
  tool_call_id?: string;
}
interface Conv {
  messages: Msg[];
  tools?: { type: string; function: { name: string; parameters: Schema } }[];
}

function readJsonl<T>(rel: string): T[] {
  const text = readFileSync(join(DIR, rel), "utf8");
  expect(text.endsWith("\n"), `${rel} ends with a newline`).toBe(true);
  return text
    .slice(0, -1)
    .split("\n")
    .map((line, i) => {
      try {
        return JSON.parse(line) as T;
      } catch (e) {
        throw new Error(`${rel}:${i + 1}: not JSON: ${(e as Error).message}`);
      }
    });
}

const TOOLS = JSON.parse(readFileSync(join(DIR, "tools.json"), "utf8")) as NonNullable<Conv["tools"]>;
const SCHEMAS = new Map(TOOLS.map((t) => [t.function.name, t.function.parameters]));
const data = Object.fromEntries(TRAIN_FILES.map((f) => [f, readJsonl<Conv>(f)])) as Record<string, Conv[]>;

/** The subset of JSON Schema tools.json uses; returns the problems found (empty = valid). */
function validate(value: unknown, s: Schema, at = "$"): string[] {
  const errs: string[] = [];
  const t = s.type as string | undefined;
  const typeOk =
    t === undefined ||
    (t === "object" && typeof value === "object" && value !== null && !Array.isArray(value)) ||
    (t === "array" && Array.isArray(value)) ||
    (t === "string" && typeof value === "string") ||
    (t === "number" && typeof value === "number" && Number.isFinite(value)) ||
    (t === "integer" && Number.isInteger(value)) ||
    (t === "boolean" && typeof value === "boolean");
  if (!typeOk) return [`${at}: expected ${t}, got ${JSON.stringify(value)}`];
  if (Array.isArray(s.enum) && !s.enum.includes(value as Json))
    errs.push(`${at}: ${JSON.stringify(value)} not in ${JSON.stringify(s.enum)}`);
  if (typeof s.pattern === "string" && !new RegExp(s.pattern).test(value as string))
    errs.push(`${at}: ${JSON.stringify(value)} does not match ${s.pattern}`);
  if (typeof s.minLength === "number" && (value as string).length < s.minLength)
    errs.push(`${at}: shorter than ${s.minLength}`);
  if (typeof s.exclusiveMinimum === "number" && !((value as number) > s.exclusiveMinimum))
    errs.push(`${at}: ${value} not > ${s.exclusiveMinimum}`);
  if (t === "object") {
    const obj = value as Record<string, unknown>;
    const props = (s.properties ?? {}) as Record<string, Schema>;
    for (const r of (s.required ?? []) as string[])
      if (!(r in obj)) errs.push(`${at}: missing required ${r}`);
    for (const [k, v] of Object.entries(obj)) {
      if (props[k]) errs.push(...validate(v, props[k], `${at}.${k}`));
      else if (s.additionalProperties === false) errs.push(`${at}: unexpected property ${k}`);
    }
  }
  return errs;
}

/** Checks one conversation's structure; returns the problems found. */
function checkConversation(c: Conv): string[] {
  const errs: string[] = [];
  const ms = c.messages;
  if (!Array.isArray(ms) || ms.length < 2) return ["fewer than 2 messages"];
  let pendingIds: string[] = [];
  let prev = "start";
  ms.forEach((m, i) => {
    const where = `message ${i} (${m.role})`;
    if (typeof m.content !== "string") errs.push(`${where}: content is not a string`);
    if (m.role === "system") {
      if (i !== 0) errs.push(`${where}: system only first`);
    } else if (m.role === "user") {
      if (!["start", "system", "assistant"].includes(prev)) errs.push(`${where}: follows ${prev}`);
      if (pendingIds.length) errs.push(`${where}: tool calls ${pendingIds} left unanswered`);
      if (!m.content.trim()) errs.push(`${where}: empty`);
    } else if (m.role === "assistant") {
      if (!["user", "tool"].includes(prev)) errs.push(`${where}: follows ${prev}`);
      if (pendingIds.length) errs.push(`${where}: tool calls ${pendingIds} left unanswered`);
      if (m.tool_calls) {
        if (!c.tools) errs.push(`${where}: tool_calls without a tools list`);
        if (m.tool_calls.length === 0) errs.push(`${where}: empty tool_calls`);
        for (const call of m.tool_calls) {
          if (call.type !== "function") errs.push(`${where}: call type ${call.type}`);
          const schema = SCHEMAS.get(call.function.name);
          if (!schema) {
            errs.push(`${where}: unknown tool ${call.function.name}`);
            continue;
          }
          if (typeof call.function.arguments !== "string") {
            errs.push(`${where}: arguments must be a JSON string`);
            continue;
          }
          errs.push(
            ...validate(JSON.parse(call.function.arguments), schema, `${where} ${call.function.name}`),
          );
        }
        pendingIds = m.tool_calls.map((t) => t.id);
        if (new Set(pendingIds).size !== pendingIds.length) errs.push(`${where}: duplicate call ids`);
      } else if (!m.content.trim()) errs.push(`${where}: no content and no tool calls`);
    } else if (m.role === "tool") {
      if (!["assistant", "tool"].includes(prev) || (prev === "assistant" && !ms[i - 1].tool_calls))
        errs.push(`${where}: does not follow a tool call`);
      const k = pendingIds.indexOf(m.tool_call_id ?? "");
      if (k < 0) errs.push(`${where}: tool_call_id ${m.tool_call_id} answers no open call`);
      else pendingIds.splice(k, 1);
      JSON.parse(m.content);
    } else errs.push(`${where}: unknown role`);
    prev = m.role;
  });
  const last = ms[ms.length - 1];
  if (last.role !== "assistant" || last.tool_calls) errs.push("does not end with an assistant answer");
  return errs;
}

const isZh = (c: Conv) =>
  /[\u4e00-\u9fff]/.test(
    c.messages
      .filter((m) => m.role === "user")
      .map((m) => m.content)
      .join(""),
  );

describe("payment-support sample set", () => {
  it("has >= 240 training conversations, both languages >= 40% each", () => {
    const all = Object.values(data).flat();
    expect(all.length).toBeGreaterThanOrEqual(240);
    const zh = all.filter(isZh).length;
    expect(zh / all.length).toBeGreaterThanOrEqual(0.4);
    expect((all.length - zh) / all.length).toBeGreaterThanOrEqual(0.4);
    for (const f of TRAIN_FILES) expect(data[f].filter(isZh).length, f).toBeGreaterThan(0);
  });

  it("every conversation is well-formed: roles in order, tool calls valid against tools.json, results answer calls", () => {
    for (const f of TRAIN_FILES) {
      data[f].forEach((c, i) => {
        expect(checkConversation(c), `${f}:${i + 1}`).toEqual([]);
      });
    }
  });

  it("the checks reject broken conversations", () => {
    const c = structuredClone(data["tools.jsonl"].find((x) => x.messages.some((m) => m.tool_calls))!);
    const call = c.messages.find((m) => m.tool_calls)!.tool_calls![0];
    const args = JSON.parse(call.function.arguments);
    const key = Object.keys(args)[0];
    call.function.arguments = JSON.stringify({ ...args, [key]: 12 });
    expect(checkConversation(c).join()).toMatch(/expected string/);
    call.function.name = "delete_account";
    expect(checkConversation(c).join()).toMatch(/unknown tool/);
    const orphan = structuredClone(data["style.jsonl"][0]);
    orphan.messages.splice(2, 0, { role: "tool", content: "{}", tool_call_id: "call_x" });
    expect(checkConversation(orphan).join()).toMatch(/does not follow a tool call/);
    expect(validate({ card_last4: "12345", reason: "lost" }, SCHEMAS.get("freeze_card")!).join()).toMatch(
      /does not match/,
    );
    expect(
      validate({ transaction_id: "TP2503140001", amount: 5 }, SCHEMAS.get("refund_transaction")!).join(),
    ).toMatch(/missing required reason/);
    expect(
      validate({ from_currency: "USD", to_currency: "XAU" }, SCHEMAS.get("get_exchange_rate")!).join(),
    ).toMatch(/not in/);
  });

  it("tools.jsonl: tools list is tools.json; covers single, parallel, multi-step and no-call cases", () => {
    const convs = data["tools.jsonl"];
    for (const c of convs) expect(c.tools).toEqual(TOOLS);
    const callTurns = (c: Conv) => c.messages.filter((m) => m.tool_calls);
    expect(convs.some((c) => callTurns(c).length === 1 && callTurns(c)[0].tool_calls!.length === 1)).toBe(
      true,
    );
    expect(convs.some((c) => callTurns(c).some((m) => m.tool_calls!.length >= 2))).toBe(true);
    expect(convs.some((c) => callTurns(c).length >= 2)).toBe(true);
    expect(convs.filter((c) => callTurns(c).length === 0).length).toBeGreaterThanOrEqual(6);
    const used = new Set(
      convs.flatMap((c) => callTurns(c).flatMap((m) => m.tool_calls!.map((t) => t.function.name))),
    );
    expect([...used].sort()).toEqual([...SCHEMAS.keys()].sort());
    for (const f of ["style.jsonl", "knowledge.jsonl", "reasoning.jsonl"])
      for (const c of data[f]) expect(c.tools, f).toBeUndefined();
  });

  it("reasoning samples carry reasoning_content on every assistant turn; other files carry none", () => {
    const rs = data["reasoning.jsonl"];
    expect(rs.some((c) => c.messages.filter((m) => m.role === "user").length >= 2)).toBe(true);
    for (const c of rs)
      for (const m of c.messages.filter((x) => x.role === "assistant"))
        expect(m.reasoning_content?.trim()).toBeTruthy();
    for (const f of ["style.jsonl", "knowledge.jsonl", "tools.jsonl"]) {
      for (const c of data[f]) for (const m of c.messages) expect(m.reasoning_content, f).toBeUndefined();
    }
  });

  it("fees in the reasoning follow the policy: every '1.5% × X = Y' has Y = X × 1.5% rounded half up", () => {
    let n = 0;
    for (const c of data["reasoning.jsonl"]) {
      for (const m of c.messages) {
        for (const [, x, y] of (m.reasoning_content ?? "").matchAll(
          /1\.5% × ([\d,]+\.\d{2}) (?:USD|元) = ([\d,]+\.\d{2})/g,
        )) {
          const cents = Math.round(Number(x.replace(/,/g, "")) * 100);
          expect(Math.round(Number(y.replace(/,/g, "")) * 100), m.reasoning_content).toBe(
            Math.floor((cents * 15 * 2 + 1000) / 2000),
          );
          n++;
        }
        for (const [, a, b, s] of (m.reasoning_content ?? "").matchAll(
          /= ([\d,]+\.\d{2}) (?:USD|元) \+ ([\d,]+\.\d{2}) (?:USD|元) = ([\d,]+\.\d{2})/g,
        )) {
          const v = (t: string) => Math.round(Number(t.replace(/,/g, "")) * 100);
          expect(v(a) + v(b)).toBe(v(s));
        }
      }
    }
    expect(n).toBeGreaterThanOrEqual(10);
  });

  it("eval/questions.jsonl: held-out questions (not in training) with references, both languages", () => {
    const qs = readJsonl<{ id: string; question: string; reference: string; lang: string }>(
      "eval/questions.jsonl",
    );
    expect(qs.length).toBeGreaterThanOrEqual(40);
    expect(new Set(qs.map((q) => q.id)).size).toBe(qs.length);
    const trainUser = new Set(
      Object.values(data)
        .flat()
        .flatMap((c) => c.messages.filter((m) => m.role === "user").map((m) => m.content.trim())),
    );
    for (const q of qs) {
      expect(Object.keys(q).sort()).toEqual(["id", "lang", "question", "reference"]);
      expect(["en", "zh"]).toContain(q.lang);
      expect(q.reference.length).toBeGreaterThan(10);
      expect(trainUser.has(q.question.trim()), q.question).toBe(false);
    }
    expect(qs.filter((q) => q.lang === "zh").length).toBeGreaterThanOrEqual(qs.length * 0.4);
  });

  it("eval tool cases have the BFCL shape and their ground truth is valid against tools.json", () => {
    const cases = readJsonl<{
      id: string;
      question: { role: string; content: string }[][];
      function: { name: string; parameters: Schema }[];
    }>("eval/tool_cases.jsonl");
    const answers = readJsonl<{ id: string; ground_truth: Record<string, Record<string, Json[]>>[] }>(
      "eval/tool_answers.jsonl",
    );
    // The shape of the public BFCL files this mirrors.
    const bfcl = JSON.parse(readFileSync("../shared/data/bfcl/multiple.jsonl", "utf8").split("\n")[0]);
    expect(Object.keys(cases[0]).sort()).toEqual(Object.keys(bfcl).sort());
    expect(cases.length).toBeGreaterThanOrEqual(20);
    expect(answers.map((a) => a.id)).toEqual(cases.map((c) => c.id));
    for (const c of cases) {
      expect(c.question[0][0].role).toBe("user");
      expect(c.function.map((f) => f.name).sort()).toEqual([...SCHEMAS.keys()].sort());
      for (const f of c.function) expect(f.parameters.type).toBe("dict");
    }
    expect(answers.some((a) => a.ground_truth.length === 0)).toBe(true);
    expect(answers.some((a) => a.ground_truth.length >= 2)).toBe(true);
    for (const a of answers) {
      for (const call of a.ground_truth) {
        const [[name, args]] = Object.entries(call);
        const schema = SCHEMAS.get(name)!;
        expect(schema, name).toBeDefined();
        const props = schema.properties as Record<string, Schema>;
        for (const r of schema.required as string[])
          expect(args[r]?.filter((v) => v !== "").length, `${a.id} ${r}`).toBeGreaterThan(0);
        for (const [k, allowed] of Object.entries(args)) {
          expect(props[k], `${a.id} ${k}`).toBeDefined();
          for (const v of allowed) if (v !== "") expect(validate(v, props[k], `${a.id}.${k}`)).toEqual([]);
        }
      }
    }
  });

  it("demo.yaml and qwen3-8b.yaml are valid run configs over the four files", () => {
    for (const f of ["demo.yaml", "qwen3-8b.yaml"]) {
      const cfg = parseConfig(RunConfig, readYaml(join(DIR, f)), f);
      const paths = cfg.data.sources.map((s) => s.path);
      expect(paths).toEqual(TRAIN_FILES.map((x) => `${DIR}/${x}`));
      expect(cfg.data.sources.find((s) => s.path === `${DIR}/reasoning.jsonl`)?.thinking).toBe(true);
    }
  });

  const tmp = mkdtempSync(join(tmpdir(), "tuna-examples-"));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  it("the generator is deterministic: a fresh run reproduces the committed files byte for byte", () => {
    execFileSync(process.execPath, [join(DIR, "generate.mjs"), "--out", tmp], { stdio: "pipe" });
    for (const f of [...TRAIN_FILES, ...EVAL_FILES]) {
      expect(readFileSync(join(tmp, f)).equals(readFileSync(join(DIR, f))), f).toBe(true);
    }
  });
});
