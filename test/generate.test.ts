// The generation client against a stand-in engine that speaks the protocol (test/fixtures/generate/
// fake-engine.mjs): readiness, many requests in flight, stop/length/cancel, engine errors as TunaError,
// streaming decode of split UTF-8 characters, and chatOnce's prompt/stop ids/parse with the real Qwen3 files.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chatOnce, loadChatModel, StreamDecoder, startGenerator } from "../src/engine/generate.ts";
import { REPO_ROOT } from "../src/engine/runner.ts";
import { TunaError } from "../src/errors.ts";
import { qwen3TokenizerDir } from "../src/model/init.ts";
import { loadChatTemplate, renderChat } from "../src/template/index.ts";
import { loadTokenizer } from "../src/tokenizer/index.ts";

const FAKE = join(REPO_ROOT, "test/fixtures/generate/fake-engine.mjs");
let savedPython: string | undefined;
let modelDir: string;
let adapterDir: string;
let tmp: string;

beforeAll(() => {
  savedPython = process.env.TUNA_PYTHON;
  process.env.TUNA_PYTHON = FAKE;
  tmp = mkdtempSync(join(tmpdir(), "tuna-gen-test-"));
  // A model directory as far as the client reads it: config.json and the real Qwen3 tokenizer + template.
  modelDir = join(tmp, "model");
  mkdirSync(modelDir);
  writeFileSync(join(modelDir, "config.json"), "{}");
  for (const f of ["tokenizer.json", "tokenizer_config.json"])
    copyFileSync(join(qwen3TokenizerDir(), f), join(modelDir, f));
  adapterDir = join(tmp, "adapter");
  mkdirSync(adapterDir);
  writeFileSync(join(adapterDir, "adapter_config.json"), "{}");
});
afterAll(() => {
  if (savedPython === undefined) delete process.env.TUNA_PYTHON;
  else process.env.TUNA_PYTHON = savedPython;
});

async function rejection(p: Promise<unknown>): Promise<TunaError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TunaError);
    return e as TunaError;
  }
  throw new Error("expected a rejection");
}

describe("startGenerator", () => {
  it("writes the plan, resolves on ready and runs many requests at once", async () => {
    const work = join(tmp, "w1");
    const log = join(tmp, "requests1.jsonl");
    const gen = await startGenerator({
      modelDir,
      adapters: { tuned: adapterDir },
      device: "cpu",
      maxBatchSize: 4,
      maxModelLen: 9000,
      compile: true,
      workDir: work,
      env: { FAKE_REQUEST_LOG: log, FAKE_REPLY_IDS: JSON.stringify({ base: [5, 6, 7, 9], tuned: [8, 9] }) },
    });
    expect(gen.device).toBe("cpu");
    expect(gen.dtype).toBe("float32");
    const plan = JSON.parse(readFileSync(join(work, "generate_plan.json"), "utf8"));
    expect(plan).toMatchObject({
      command: "generate",
      model: { path: modelDir, dtype: "float32" },
      max_batch_size: 4,
      max_model_len: 9000,
      compile: true,
    });
    expect(plan).not.toHaveProperty("mode"); // not given: the engine's default
    expect(plan.adapters).toEqual({ tuned: adapterDir });

    const streamed: number[][] = [];
    const [a, b, c] = await Promise.all([
      gen.generate({ promptIds: [1, 2, 3], maxNewTokens: 10, stopIds: [9] }, (ids) => streamed.push(ids)),
      gen.generate({
        promptIds: [4],
        maxNewTokens: 10,
        stopIds: [9],
        adapter: "tuned",
        temperature: 0.7,
        seed: 3,
      }),
      gen.generate({ promptIds: [4, 4], maxNewTokens: 3 }),
    ]);
    expect(a).toMatchObject({ ids: [5, 6, 7, 9], reason: "stop", promptTokens: 3, generatedTokens: 4 });
    expect(streamed).toEqual([[5], [6], [7], [9]]);
    expect(b).toMatchObject({ ids: [8, 9], reason: "stop", promptTokens: 1 });
    expect(c).toMatchObject({ ids: [5, 6, 7], reason: "length", generatedTokens: 3 });
    await gen.close();

    const sent = readFileSync(log, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(sent).toHaveLength(3);
    expect(new Set(sent.map((r) => r.id)).size).toBe(3);
    expect(sent[1]).toMatchObject({
      prompt_ids: [4],
      adapter: "tuned",
      temperature: 0.7,
      seed: 3,
      stop_ids: [9],
    });
    // Greedy, no top-k/top-p, no penalty unless asked.
    expect(sent[0]).toMatchObject({
      temperature: 0,
      top_p: 1,
      top_k: 0,
      repetition_penalty: 1,
      seed: null,
      adapter: null,
    });
  });

  it("cancels one request while the others go on", async () => {
    const log = join(tmp, "requests2.jsonl");
    const gen = await startGenerator({ modelDir, env: { FAKE_TOKEN_MS: "15", FAKE_REQUEST_LOG: log } });
    let cancelled = false;
    const long = gen.generate({ promptIds: [100], maxNewTokens: 200, id: "long" }, (_n, all) => {
      if (all.length === 2 && !cancelled) {
        cancelled = true;
        gen.cancel("long");
      }
    });
    const short = gen.generate({ promptIds: [200], maxNewTokens: 5 });
    expect(gen.inFlight().sort()).toEqual(["long", "r1"]);
    const [l, s] = await Promise.all([long, short]);
    expect(l.reason).toBe("cancelled");
    expect(l.ids.length).toBeLessThan(200);
    expect(l.ids.slice(0, 2)).toEqual([101, 102]);
    expect(s).toMatchObject({ reason: "length", ids: [201, 202, 203, 204, 205] });
    expect(readFileSync(log, "utf8")).toContain('{"type":"cancel","id":"long"}');
    await gen.close();
  });

  it("turns an engine error before ready into a TunaError with the engine's code and hint", async () => {
    const e = await rejection(startGenerator({ modelDir, env: { FAKE_FAIL: "load" } }));
    expect(e.code).toBe("MODEL_LOAD_FAILED");
    expect(e.message).toContain(`cannot load ${modelDir}`);
    expect(e.hint).toBe("check the weights");
  });

  it("rejects in-flight requests when the engine dies, and a request's own error only that request", async () => {
    const gen = await startGenerator({
      modelDir,
      adapters: { tuned: adapterDir },
      env: { FAKE_FAIL: "crash" },
    });
    const e = await rejection(gen.generate({ promptIds: [1], maxNewTokens: 2 }));
    expect(e.code).toBe("ENGINE_CRASHED");
    expect(e.message).toContain("exited with 3");
    expect((await rejection(gen.generate({ promptIds: [1], maxNewTokens: 2 }))).code).toBe("ENGINE_CRASHED");
    await gen.close();

    const gen2 = await startGenerator({ modelDir });
    const bad = await rejection(gen2.generate({ promptIds: [], maxNewTokens: 2 }));
    expect(bad.code).toBe("GENERATE_BAD_REQUEST");
    expect(bad.message).toContain("prompt_ids");
    expect((await rejection(gen2.generate({ promptIds: [1], maxNewTokens: 1, adapter: "nope" }))).code).toBe(
      "ADAPTER_NOT_FOUND",
    );
    expect((await gen2.generate({ promptIds: [1], maxNewTokens: 1 })).ids).toEqual([2]);
    await gen2.close();
  });

  it("refuses a directory without config.json and an adapter without adapter_config.json", async () => {
    expect((await rejection(startGenerator({ modelDir: tmp }))).code).toBe("MODEL_NOT_FOUND");
    expect((await rejection(startGenerator({ modelDir, adapters: { x: tmp } }))).code).toBe(
      "ADAPTER_NOT_FOUND",
    );
  });
});

describe("StreamDecoder", () => {
  it("never splits a multi-byte character and adds up to the full decode", async () => {
    const tok = await loadTokenizer(qwen3TokenizerDir());
    const text = "退款 𝔘𝔫𝔦 龘靐齉 🦜🪿 ok";
    const ids = Array.from(tok.encode(text));
    // The test is only meaningful if some token holds part of a character.
    expect(ids.some((id) => tok.decode([id]).includes("\uFFFD"))).toBe(true);
    const d = new StreamDecoder(tok);
    const pieces = ids.map((id) => d.push([id]));
    pieces.push(d.flush());
    for (const p of pieces) expect(p).not.toContain("\uFFFD");
    expect(pieces.includes("")).toBe(true);
    expect(pieces.join("")).toBe(text);
  });
});

describe("chatOnce", () => {
  it("renders with the model's template, stops at <|im_end|> and parses reasoning and tool calls", async () => {
    const model = await loadChatModel(modelDir);
    const tok = model.tokenizer;
    const imEnd = tok.tokenToId("<|im_end|>")!;
    expect(model.stopIds).toContain(imEnd);
    const reply =
      '<think>\nThe card is stolen.\n</think>\n\nFreezing it now.\n<tool_call>\n{"name": "freeze_card", "arguments": {"card_last4": "3242", "reason": "stolen"}}\n</tool_call>';
    const log = join(tmp, "requests3.jsonl");
    const gen = await startGenerator({
      modelDir,
      env: { FAKE_REPLY_IDS: JSON.stringify([...tok.encode(reply), imEnd, 1, 2]), FAKE_REQUEST_LOG: log },
    });
    const tools = JSON.parse(readFileSync(join(REPO_ROOT, "examples/payment-support/tools.json"), "utf8"));
    const messages = [{ role: "user", content: "My card ending 3242 was stolen" }];
    const pieces: string[] = [];
    const a = await chatOnce({
      gen,
      model,
      messages,
      tools,
      thinking: true,
      sampling: { maxNewTokens: 500 },
      onText: (p) => pieces.push(p),
    });
    await gen.close();
    expect(a.reason).toBe("stop");
    expect(a.text).toBe(reply);
    expect(pieces.join("")).toBe(reply);
    expect(a.reasoning).toBe("The card is stolen.");
    expect(a.content).toBe("Freezing it now.");
    expect(a.tool_calls).toEqual([
      { name: "freeze_card", arguments: { card_last4: "3242", reason: "stolen" } },
    ]);
    const sent = JSON.parse(readFileSync(log, "utf8").trim());
    const prompt = renderChat(loadChatTemplate(modelDir), messages, {
      addGenerationPrompt: true,
      enableThinking: true,
      tools,
    });
    expect(a.prompt).toBe(prompt);
    expect(sent.prompt_ids).toEqual(Array.from(tok.encode(prompt)));
    expect(sent.stop_ids).toContain(imEnd);
    expect(prompt).toContain("freeze_card");
    expect(prompt.endsWith("<|im_start|>assistant\n")).toBe(true);
  });
});

describe("startGenerator with the real engine (tiny model)", () => {
  it("streams, runs requests together, and cancels one", async () => {
    const dir = join(tmp, "tiny");
    execFileSync("node", [join(REPO_ROOT, "bin/tuna.mjs"), "model", "init", dir, "--preset", "tiny"], {
      cwd: REPO_ROOT,
      stdio: "ignore",
    });
    const prev = process.env.TUNA_PYTHON;
    if (savedPython === undefined) delete process.env.TUNA_PYTHON;
    else process.env.TUNA_PYTHON = savedPython;
    try {
      const gen = await startGenerator({ modelDir: dir, device: "cpu", maxBatchSize: 4 });
      expect(gen.device).toContain("cpu");
      const prompt = [151644, 872, 198, 14990, 151645, 198, 151644, 77091, 198];
      let seen = 0;
      const long = gen.generate({ promptIds: prompt, maxNewTokens: 4000, id: "long" }, (_n, all) => {
        seen = all.length;
        if (all.length >= 3) gen.cancel("long");
      });
      const a = gen.generate({ promptIds: prompt, maxNewTokens: 6 });
      const b = gen.generate({ promptIds: prompt, maxNewTokens: 6 });
      const [l, ra, rb] = await Promise.all([long, a, b]);
      expect(l.reason).toBe("cancelled");
      expect(l.ids.length).toBeLessThan(4000);
      expect(seen).toBe(l.ids.length);
      expect(ra).toMatchObject({ reason: "length", generatedTokens: 6, promptTokens: prompt.length });
      expect(ra.ids).toHaveLength(6);
      // Greedy: the same prompt gives the same ids, alone or batched, and the cancelled one began the same way.
      expect(rb.ids).toEqual(ra.ids);
      expect(l.ids.slice(0, 3)).toEqual(ra.ids.slice(0, 3));
      await gen.close();
    } finally {
      process.env.TUNA_PYTHON = prev;
    }
  });
});
