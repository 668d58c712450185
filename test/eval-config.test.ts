// `tuna eval <config>`: the config schema and its errors, the BFCL → JSON Schema tool conversion, the judge's
// score parsing, and the whole path on CPU with the real engine: tiny random model + a random LoRA adapter
// (made with peft) → generate → parse → score → judge (a real HTTP server on 127.0.0.1) → report. The model is
// random, so the test checks structure and consistency (same prompts for every model, report numbers equal to
// what the predictions give), not quality.
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../src/engine/runner.ts";
import { TunaError } from "../src/errors.ts";
import { gsm8kCorrect } from "../src/eval/gsm8k.ts";
import { scoreAnswer } from "../src/eval/text-metrics.ts";
import { thinkingRate } from "../src/eval/thinking.ts";
import { scoreToolFiles } from "../src/eval/tool-eval.ts";
import { EvalConfig, loadEvalConfig } from "../src/jobs/eval/config.ts";
import { parseJudgeScore } from "../src/jobs/eval/judge.ts";
import { bfclToJsonSchema, type Prediction, readPredictions, resolveAdapters } from "../src/jobs/eval/run.ts";
import { testPython } from "./helpers/python.ts";

const TUNA = join(REPO_ROOT, "bin/tuna.mjs");
let tmp: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "tuna-eval-test-"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("eval config", () => {
  it("fills defaults", () => {
    const c = EvalConfig.parse({ model: "m", sets: { answers: { path: "q.jsonl" } } });
    expect(c.generation).toMatchObject({
      max_new_tokens: 256,
      temperature: 0,
      thinking: false,
      batch_size: 8,
    });
    expect(c.adapters).toEqual({});
    expect(c.base_name).toBe("base");
  });

  it("lists every problem with its line, field and value", () => {
    const file = join(tmp, "bad.yaml");
    writeFileSync(
      file,
      [
        "model: m",
        "sets:",
        "  rag: { knowledge: k }",
        "  general: { path: g.jsonl, max_drop: 2 }",
        "generation: { temperature: -1 }",
        "judge: { url: not-a-url, model: x, rubric: r }",
      ].join("\n"),
    );
    let err: TunaError | undefined;
    try {
      loadEvalConfig(file);
    } catch (e) {
      err = e as TunaError;
    }
    expect(err?.code).toBe("CONFIG_INVALID");
    expect(err?.message).toContain(file);
    expect(err?.hint).toContain("docs/eval-config.md");
    expect(err?.message).toMatch(/line 4: sets\.general\.max_drop: .*\(given: 2\)/);
    expect(err?.message).toMatch(/line 5: generation\.temperature: .*\(given: -1\)/);
    expect(err?.message).toMatch(/judge\.url: .*"not-a-url"/);
    expect(err?.message).toContain("rag asks the answers set's questions");
  });

  it("converts BFCL parameter types to JSON Schema, nested", () => {
    const f = {
      name: "f",
      parameters: {
        type: "dict",
        properties: {
          a: { type: "float" },
          b: { type: "array", items: { type: "dict", properties: { c: { type: "tuple" } } } },
        },
        required: ["a"],
      },
    };
    expect(bfclToJsonSchema(f)).toEqual({
      name: "f",
      parameters: {
        type: "object",
        properties: {
          a: { type: "number" },
          b: { type: "array", items: { type: "object", properties: { c: { type: "array" } } } },
        },
        required: ["a"],
      },
    });
  });

  it("names listed adapters by their run folder, and refuses two of one name or a folder without an adapter", () => {
    const run = join(tmp, "runs", "demo-20250101");
    const plain = join(tmp, "my adapter");
    for (const d of [join(run, "adapter"), plain]) {
      mkdirSync(d, { recursive: true });
      writeFileSync(join(d, "adapter_config.json"), "{}");
    }
    expect(resolveAdapters([run, plain])).toEqual({
      "demo-20250101": join(run, "adapter"),
      "my-adapter": plain,
    });
    expect(resolveAdapters({ a: join(run, "adapter") })).toEqual({ a: join(run, "adapter") });
    expect(() => resolveAdapters([run, join(run, "adapter")])).toThrow(
      /two adapters are named "demo-20250101"/,
    );
    expect(() => resolveAdapters([tmp])).toThrow(TunaError);
  });

  it("reads the judge's last SCORE and scales it", () => {
    expect(parseJudgeScore("Good. SCORE: 4", 5)).toBeCloseTo(0.8);
    expect(parseJudgeScore("score: 1 ... final Score = **3**", 5)).toBeCloseTo(0.6);
    expect(parseJudgeScore("SCORE: 9", 5)).toBe(1);
    expect(parseJudgeScore("no number here", 5)).toBeNull();
  });
});

describe("tuna eval on the tiny model (real engine)", () => {
  let server: Server;
  const judgeBodies: { model: string; messages: { role: string; content: string }[] }[] = [];
  // The judge's score is a function of the answer, so the test can recompute it.
  const judgeScore = (answer: string) => [...answer].length % 6;

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => {
        body += c;
      });
      req.on("end", () => {
        const b = JSON.parse(body);
        judgeBodies.push(b);
        if (req.url !== "/v1/chat/completions" || req.headers.authorization !== "Bearer sekret") {
          res.writeHead(404).end("no");
          return;
        }
        const answer = b.messages[1].content.split("Assistant's answer:\n")[1];
        res.writeHead(200, { "content-type": "application/json" });
        res.end(
          JSON.stringify({
            choices: [{ message: { role: "assistant", content: `Fine.\nSCORE: ${judgeScore(answer)}` } }],
          }),
        );
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("writes predictions and a report whose numbers are the predictions' scores", async () => {
    const model = join(tmp, "tiny");
    execFileSync("node", [TUNA, "model", "init", model, "--preset", "tiny"], {
      cwd: REPO_ROOT,
      stdio: "ignore",
    });
    const adapter = join(tmp, "adapter");
    // A LoRA adapter with random (non-zero) B, so the tuned model really differs from the base.
    execFileSync(
      testPython(),
      [
        "-c",
        [
          "import sys, torch",
          "from transformers import AutoModelForCausalLM",
          "from peft import LoraConfig, get_peft_model",
          "torch.manual_seed(0)",
          "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])",
          "p = get_peft_model(m, LoraConfig(r=4, lora_alpha=64, target_modules=['q_proj', 'v_proj', 'down_proj'], init_lora_weights=False))",
          "p.save_pretrained(sys.argv[2])",
        ].join("\n"),
        model,
        adapter,
      ],
      { stdio: "ignore" },
    );
    const port = (server.address() as AddressInfo).port;
    const config = join(tmp, "eval.yaml");
    writeFileSync(
      config,
      `model: ${model}
adapters: { tuned: ${adapter} }
sets:
  answers: { path: examples/payment-support/eval/questions.jsonl, limit: 2 }
  tools: { cases: examples/payment-support/eval/tool_cases.jsonl, answers: examples/payment-support/eval/tool_answers.jsonl, limit: 1 }
  general: { path: ../shared/data/gsm8k/test_first300.jsonl, limit: 2, max_drop: 0.1 }
  thinking: { limit: 1 }
  rag: { knowledge: examples/payment-support/knowledge, top_k: 2 }
generation: { max_new_tokens: 6, batch_size: 8 }
judge: { url: "http://127.0.0.1:${port}/v1", model: judge-1, api_key_env: TUNA_TEST_JUDGE_KEY, rubric: "Same facts as the reference; polite." }
device: cpu
`,
    );
    const out = join(tmp, "out");
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((res) => {
      const child = spawn("node", [TUNA, "eval", config, "--out", out], {
        cwd: REPO_ROOT,
        env: { ...process.env, TUNA_TEST_JUDGE_KEY: "sekret" },
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (c) => {
        stdout += c;
      });
      child.stderr.on("data", (c) => {
        stderr += c;
      });
      child.on("close", (code) => res({ code, stdout, stderr }));
    });
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
    const flagged = summary.forgetting.some((f: { flagged: boolean }) => f.flagged);
    expect(r.code, r.stderr).toBe(flagged ? 1 : 0);
    expect(r.stderr).toMatch(/generating 18\/18 │/); // progress line
    expect(r.stdout).toContain(`report: ${join(out, "report.md")}`);

    const rows = ["base", "base+rag", "tuned", "tuned+rag"];
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    expect(report.models.map((m: { name: string }) => m.name)).toEqual(rows);
    const preds: Record<string, Prediction[]> = Object.fromEntries(
      rows.map((n) => [n, readPredictions(out, n)]),
    );
    expect(preds.base.map((p) => `${p.set}/${p.id}`)).toEqual([
      "answers/cross_border_fee.en",
      "answers/cross_border_fee.zh",
      "tools/payment_simple_0",
      "general/gsm8k-1",
      "general/gsm8k-2",
      "thinking/on-0",
      "thinking/off-0",
    ]);

    // Same prompts for every model; the +rag rows share theirs and differ from the plain ones.
    const key = (p: Prediction) => `${p.set}/${p.id}`;
    expect(preds.tuned.map((p) => [key(p), p.prompt_sha256])).toEqual(
      preds.base.map((p) => [key(p), p.prompt_sha256]),
    );
    expect(preds["tuned+rag"].map((p) => p.prompt_sha256)).toEqual(
      preds["base+rag"].map((p) => p.prompt_sha256),
    );
    expect(preds["base+rag"].map((p) => p.id)).toEqual(["cross_border_fee.en", "cross_border_fee.zh"]);
    expect(preds["base+rag"][0].prompt_sha256).not.toBe(preds.base[0].prompt_sha256);
    expect(preds["base+rag"][0].prompt_tokens).toBeGreaterThan(preds.base[0].prompt_tokens);
    // The adapter is applied: some output differs.
    expect(preds.tuned.map((p) => p.text)).not.toEqual(preds.base.map((p) => p.text));

    const questions = readFileSync(join(REPO_ROOT, "examples/payment-support/eval/questions.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const gsm = readFileSync(join(REPO_ROOT, "../shared/data/gsm8k/test_first300.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    for (const row of rows) {
      const m = report.models.find((x: { name: string }) => x.name === row).metrics;
      const ps = preds[row];
      const answers = ps.filter((p) => p.set === "answers" || p.set === "rag");
      // Scores recomputed from the predictions' text, and the report's numbers are their means.
      for (const p of answers) {
        const q = questions.find((x) => x.id === p.id);
        const s = scoreAnswer(p.content, q.reference);
        expect(p.scores["answers.token_f1"]).toBeCloseTo(s.token_f1, 10);
        expect(p.scores["answers.rouge_l"]).toBeCloseTo(s.rouge_l, 10);
        expect(p.judge?.score).toBeCloseTo(judgeScore(p.content) / 5, 10);
      }
      expect(m["answers.token_f1"]).toBeCloseTo(mean(answers.map((p) => p.scores["answers.token_f1"])), 10);
      expect(m["answers.judge"]).toBeCloseTo(mean(answers.map((p) => judgeScore(p.content) / 5)), 10);
      if (row.endsWith("+rag")) {
        expect(Object.keys(m).every((k) => k.startsWith("answers."))).toBe(true);
        continue;
      }
      for (const p of ps.filter((x) => x.set === "general")) {
        const line = Number(p.id.replace("gsm8k-", ""));
        expect(p.scores["general.gsm8k_accuracy"]).toBe(gsm8kCorrect(p.text, gsm[line - 1].answer) ? 1 : 0);
      }
      expect(m["general.gsm8k_accuracy"]).toBe(
        mean(ps.filter((x) => x.set === "general").map((p) => p.scores["general.gsm8k_accuracy"])),
      );
      // Tools: the same verdict as `tuna eval tools` gives the raw texts.
      const predFile = join(tmp, `${row}-tools.jsonl`);
      writeFileSync(
        predFile,
        ps
          .filter((p) => p.set === "tools")
          .map((p) => JSON.stringify({ id: p.id, text: p.text }))
          .join("\n"),
      );
      const casesFile = join(tmp, "case0.jsonl");
      writeFileSync(
        casesFile,
        readFileSync(join(REPO_ROOT, "examples/payment-support/eval/tool_cases.jsonl"), "utf8").split(
          "\n",
        )[0],
      );
      const answersFile = join(tmp, "answer0.jsonl");
      writeFileSync(
        answersFile,
        readFileSync(join(REPO_ROOT, "examples/payment-support/eval/tool_answers.jsonl"), "utf8").split(
          "\n",
        )[0],
      );
      expect(m["tools.accuracy"]).toBe(
        scoreToolFiles({ cases: casesFile, answers: answersFile, predictions: predFile }).accuracy,
      );
      const on = ps.filter((p) => p.id.startsWith("on-")).map((p) => p.text);
      const off = ps.filter((p) => p.id.startsWith("off-")).map((p) => p.text);
      expect(m["thinking.on_rate"]).toBe(thinkingRate(on).rate);
      expect(m["thinking.off_rate"]).toBe(thinkingRate(off).rate);
    }
    // Forgetting: tuned against base on the same gsm8k questions.
    const base = report.models[0].metrics["general.gsm8k_accuracy"];
    const tuned = report.models[2].metrics["general.gsm8k_accuracy"];
    expect(summary.forgetting).toEqual([
      expect.objectContaining({ model: "tuned", base, tuned, max_drop: 0.1, flagged: base - tuned > 0.1 }),
    ]);
    expect(report.models[2].metrics["general.forgetting_flag"]).toBe(flagged ? 1 : 0);

    // The judge saw each answer once (2 questions × 4 rows), with the rubric and the model from the config.
    expect(judgeBodies).toHaveLength(8);
    for (const b of judgeBodies) {
      expect(b.model).toBe("judge-1");
      expect(b.messages[0].content).toContain("Same facts as the reference; polite.");
    }
    const html = readFileSync(join(out, "report.html"), "utf8");
    expect(html).toContain("<svg");
    expect(html).toContain("Worst examples of tuned by answers.token_f1");
    const md = readFileSync(join(out, "report.md"), "utf8");
    expect(md).toContain("| tuned+rag |");
    expect(md).toContain("judge: judge-1");
  });
});
