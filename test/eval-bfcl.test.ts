// BFCL checker against the real BFCL v4 data in ../shared/data/bfcl: ground truths scored as predictions
// must pass, and each kind of corruption must fail with its own error kind.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { type BfclCase, checkCase, type ExpectedCall, standardizeString } from "../src/eval/bfcl.ts";
import { isPlainObject, PyFloat } from "../src/eval/pyjson.ts";
import type { ParsedCall } from "../src/eval/qwen3-output.ts";
import { predictionCalls, readJsonLines, scoreToolFiles } from "../src/eval/tool-eval.ts";

const DATA = "../shared/data/bfcl";
const tmp = mkdtempSync(join(tmpdir(), "tuna-eval-bfcl-"));

/** A ground-truth value written as a real value: first allowed value, recursing into `{key: [allowed]}`. */
function build(v: unknown, keepRequired: readonly string[] = []): unknown {
  if (Array.isArray(v)) return v.map((x) => build(x));
  if (isPlainObject(v) && Object.values(v).every(Array.isArray)) {
    const out: Record<string, unknown> = {};
    for (const [k, allowed] of Object.entries(v as Record<string, unknown[]>)) {
      // BFCL writes [] where the empty list is the answer (live_simple_106-63-0, live_simple_112-68-0).
      if (allowed.length === 0) {
        out[k] = [];
        continue;
      }
      const first =
        allowed[0] === "" && keepRequired.includes(k) ? allowed.find((a) => a !== "") : allowed[0];
      if (first !== "" && first !== undefined) out[k] = build(first);
    }
    return out;
  }
  return v;
}

function load(cat: string) {
  const cases = new Map(
    readJsonLines(`${DATA}/${cat}.jsonl`).map(({ value }) => [(value as BfclCase).id, value as BfclCase]),
  );
  const answers = readJsonLines(`${DATA}/${cat}.answers.jsonl`).map(
    ({ value }) => value as { id: string; ground_truth: ExpectedCall[] },
  );
  return { cases, answers };
}

/** Predictions from the ground truths; `keepRequired`: for a schema-required parameter, skip a leading "". */
function groundTruthPredictions(cat: string, keepRequired: boolean): string {
  const { cases, answers } = load(cat);
  const lines = answers.map((a) => {
    const c = cases.get(a.id)!;
    const tool_calls = a.ground_truth.map((g) => {
      const [name, args] = Object.entries(g)[0];
      const required = keepRequired
        ? (c.function.find((f) => f.name === name)?.parameters.required ?? [])
        : [];
      return { name, arguments: build(args, required) };
    });
    return JSON.stringify({ id: a.id, tool_calls });
  });
  const file = join(tmp, `${cat}-${keepRequired}.pred.jsonl`);
  writeFileSync(file, lines.join("\n"));
  return file;
}

const files = (cat: string, predictions: string) => ({
  cases: `${DATA}/${cat}.jsonl`,
  answers: `${DATA}/${cat}.answers.jsonl`,
  predictions,
});

describe("ground truths scored as predictions", () => {
  for (const [cat, n] of [
    ["simple_python", 400],
    ["multiple", 200],
    ["live_simple", 258],
  ] as const) {
    it(`${cat}: accuracy 1.0`, () => {
      const r = scoreToolFiles(files(cat, groundTruthPredictions(cat, true)));
      expect(r.errors).toEqual({});
      expect(r.total).toBe(n);
      expect(r.correct).toBe(n);
      expect(r.accuracy).toBe(1);
    });
  }

  it("omitting every parameter whose allowed values start with '' fails exactly the one case whose schema requires it", () => {
    // simple_python_200 lists "" (may be omitted) first for fuel_efficiency, which the function schema marks
    // required; BFCL's checker tests `required` first, so leaving it out fails there as it does here.
    const failed = ["simple_python", "live_simple"].flatMap((cat) => {
      const r = scoreToolFiles(files(cat, groundTruthPredictions(cat, false)), { details: true });
      return r.per_case!.filter((c) => !c.correct).map((c) => `${c.id}:${c.kind}`);
    });
    expect(failed).toEqual(["simple_python_200:missing_required"]);
  });

  it("irrelevance: no call on every case gives 1.0; one call on one case is caught", () => {
    const ids = readJsonLines(`${DATA}/irrelevance.jsonl`).map(({ value }) => (value as BfclCase).id);
    expect(ids.length).toBe(240);
    const empty = join(tmp, "irrelevance.pred.jsonl");
    writeFileSync(empty, ids.map((id) => JSON.stringify({ id, tool_calls: [] })).join("\n"));
    const r = scoreToolFiles({ cases: `${DATA}/irrelevance.jsonl`, predictions: empty });
    expect(r).toMatchObject({ accuracy: 1, total: 240, correct: 240, errors: {} });

    const oneCall = join(tmp, "irrelevance-called.pred.jsonl");
    const lines = ids.map((id) =>
      JSON.stringify({ id, text: "I can't compute that with the tools I have." }),
    );
    lines[0] = JSON.stringify({
      id: ids[0],
      text: '<tool_call>\n{"name": "determine_body_mass_index", "arguments": {"weight": 10, "height": 5}}\n</tool_call>',
    });
    writeFileSync(oneCall, lines.join("\n"));
    const r2 = scoreToolFiles(
      { cases: `${DATA}/irrelevance.jsonl`, predictions: oneCall },
      { details: true },
    );
    expect(r2.correct).toBe(239);
    expect(r2.errors).toEqual({ irrelevance_called: 1 });
    expect(r2.per_case![0]).toMatchObject({
      id: "irrelevance_0",
      correct: false,
      kind: "irrelevance_called",
    });
  });
});

describe("corrupted predictions fail with the right kind", () => {
  const sp = load("simple_python");
  const mu = load("multiple");
  const ls = load("live_simple");
  const gt = (set: ReturnType<typeof load>, id: string) => set.answers.find((a) => a.id === id)!.ground_truth;
  const check = (set: ReturnType<typeof load>, id: string, calls: ParsedCall[] | undefined, opts = {}) =>
    checkCase({ case: set.cases.get(id)!, groundTruth: gt(set, id), calls }, opts);
  const kindOf = (r: ReturnType<typeof checkCase>) => (r.valid ? "ok" : r.kind);
  // simple_python_0: calculate_triangle_area(base: integer [10], height: integer [5], unit: string ["units", ""])
  const tri = (args: Record<string, unknown>): ParsedCall[] => [
    { name: "calculate_triangle_area", arguments: args },
  ];

  it("the reference call passes, with and without the optional argument", () => {
    expect(kindOf(check(sp, "simple_python_0", tri({ base: 10, height: 5 })))).toBe("ok");
    expect(kindOf(check(sp, "simple_python_0", tri({ base: 10, height: 5, unit: "units" })))).toBe("ok");
  });
  it("string normalisation: case, spaces and , . / - _ * ^ are ignored; other characters are not", () => {
    expect(kindOf(check(sp, "simple_python_0", tri({ base: 10, height: 5, unit: " Units." })))).toBe("ok");
    expect(kindOf(check(sp, "simple_python_0", tri({ base: 10, height: 5, unit: "unit$" })))).toBe(
      "value_error",
    );
    expect(standardizeString("April 1, 2024")).toBe(standardizeString("april 1 2024"));
    expect(standardizeString("it's")).toBe('it"s');
  });
  it("missing required argument", () => {
    expect(kindOf(check(sp, "simple_python_0", tri({ height: 5 })))).toBe("missing_required");
  });
  it("unexpected (extra) argument", () => {
    expect(kindOf(check(sp, "simple_python_0", tri({ base: 10, height: 5, color: "red" })))).toBe(
      "unexpected_param",
    );
  });
  it("wrong type: a string for an integer; Python's 10.0 (a float) for an integer", () => {
    const r = check(sp, "simple_python_0", tri({ base: "10", height: 5 }));
    expect(r).toMatchObject({ valid: false, kind: "type_error", detail: "type_error:simple" });
    expect(kindOf(check(sp, "simple_python_0", tri({ base: new PyFloat(10), height: 5 })))).toBe(
      "type_error",
    );
  });
  it("wrong value", () => {
    const r = check(sp, "simple_python_0", tri({ base: 11, height: 5 }));
    expect(r).toMatchObject({ valid: false, kind: "value_error", detail: "value_error:others" });
  });
  it("wrong number of calls", () => {
    const two = [...tri({ base: 10, height: 5 }), ...tri({ base: 10, height: 5 })];
    expect(kindOf(check(sp, "simple_python_0", two))).toBe("wrong_count");
    expect(kindOf(check(sp, "simple_python_0", []))).toBe("wrong_count");
  });
  it("wrong function: another of the case's functions; unknown tool: a name not offered", () => {
    // multiple_0 offers triangle_properties.get and circle_properties.get; the answer is the first.
    const args = { side1: 5, side2: 4, side3: 3 };
    expect(kindOf(check(mu, "multiple_0", [{ name: "triangle_properties.get", arguments: args }]))).toBe(
      "ok",
    );
    expect(
      kindOf(check(mu, "multiple_0", [{ name: "circle_properties.get", arguments: { radius: 3 } }])),
    ).toBe("wrong_func_name");
    expect(kindOf(check(mu, "multiple_0", [{ name: "get_triangle", arguments: args }]))).toBe("unknown_tool");
  });
  it("dotted names: math_factorial stands for math.factorial unless names must be exact", () => {
    const call = (name: string): ParsedCall[] => [{ name, arguments: { number: 5 } }];
    expect(kindOf(check(sp, "simple_python_1", call("math.factorial")))).toBe("ok");
    expect(kindOf(check(sp, "simple_python_1", call("math_factorial")))).toBe("ok");
    expect(kindOf(check(sp, "simple_python_1", call("math_factorial"), { dottedNames: "exact" }))).toBe(
      "unknown_tool",
    );
  });
  it("int is accepted for float; a non-optional argument left out is missing_optional", () => {
    // simple_python_200: fuel_efficiency float ["", 25.0]; efficiency_reduction integer [0, ""].
    const calc = (args: Record<string, unknown>) =>
      check(sp, "simple_python_200", [{ name: "calculate_emissions", arguments: args }]);
    expect(kindOf(calc({ distance: 12000, fuel_type: "gas", fuel_efficiency: 25 }))).toBe("ok");
    expect(kindOf(calc({ distance: 12000, fuel_type: "gas", fuel_efficiency: 25.5 }))).toBe("value_error");
    // live_simple_0-0-0: special ["black"] is not required by the schema but the answer has no "".
    const user = (args: Record<string, unknown>) =>
      check(ls, "live_simple_0-0-0", [{ name: "get_user_info", arguments: args }]);
    expect(kindOf(user({ user_id: 7890, special: "black" }))).toBe("ok");
    expect(kindOf(user({ user_id: 7890 }))).toBe("missing_optional");
  });
  it("dict values are checked key by key (live_simple_40-17-0, a nested request body)", () => {
    const id = "live_simple_40-17-0";
    const [name, args] = Object.entries(gt(ls, id)[0])[0];
    const good = build(args) as Record<string, Record<string, unknown>>;
    expect(kindOf(check(ls, id, [{ name, arguments: good }]))).toBe("ok");
    const badValue = { ...good, body: { ...good.body, windStrength: "LOW" } };
    expect(check(ls, id, [{ name, arguments: badValue }])).toMatchObject({
      kind: "value_error",
      detail: "value_error:dict",
    });
    const extraKey = { ...good, body: { ...good.body, turbo: true } };
    expect(kindOf(check(ls, id, [{ name, arguments: extraKey }]))).toBe("value_error");
  });
  it("a truncated tool call in raw text is a parse error", () => {
    const { calls, errors } = predictionCalls({
      id: "simple_python_0",
      text: '<think>\nArea needs base and height.\n</think>\n\n<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, "hei',
    });
    const r = checkCase({
      case: sp.cases.get("simple_python_0")!,
      groundTruth: gt(sp, "simple_python_0"),
      calls,
      parseErrors: errors,
    });
    expect(r).toMatchObject({ valid: false, kind: "parse_error", detail: "parse_error:truncated_json" });
  });
});

describe("several calls", () => {
  const fn = {
    name: "refund.create",
    parameters: {
      type: "dict",
      properties: { order_id: { type: "string" }, amounts: { type: "array", items: { type: "float" } } },
      required: ["order_id"],
    },
  };
  const groundTruth: ExpectedCall[] = [
    { "refund.create": { order_id: ["A-1"], amounts: [[1.5, 2.0], ""] } },
    { "refund.create": { order_id: ["B-2"], amounts: [""] } },
  ];
  const a = { name: "refund.create", arguments: { order_id: "a1", amounts: [1.5, 2] } };
  const b = { name: "refund.create", arguments: { order_id: "B-2" } };
  const mk = (id: string): BfclCase => ({ id, question: [], function: [fn] }) as BfclCase;

  it("parallel categories match in any order; others by position", () => {
    expect(checkCase({ case: mk("parallel_0"), groundTruth, calls: [b, a] }).valid).toBe(true);
    expect(checkCase({ case: mk("parallel_0"), groundTruth, calls: [a, b] }).valid).toBe(true);
    expect(checkCase({ case: mk("live_multiple_0-0-0"), groundTruth, calls: [a, b] }).valid).toBe(true);
    expect(checkCase({ case: mk("live_multiple_0-0-0"), groundTruth, calls: [b, a] })).toMatchObject({
      kind: "value_error",
    });
    expect(checkCase({ case: mk("multiple_0"), groundTruth, calls: [b, a] }, { unordered: true }).valid).toBe(
      true,
    );
  });
  it("array items are type-checked (int allowed for float, a string is not)", () => {
    const bad = { name: "refund.create", arguments: { order_id: "A-1", amounts: [1.5, "2"] } };
    const one = [groundTruth[0]];
    expect(
      checkCase({
        case: mk("simple_0"),
        groundTruth: one,
        calls: [{ ...bad, arguments: { order_id: "A-1", amounts: [1.5, 2] } }],
      }).valid,
    ).toBe(true);
    expect(checkCase({ case: mk("simple_0"), groundTruth: one, calls: [bad] })).toMatchObject({
      kind: "type_error",
      detail: "type_error:nested",
    });
  });
});

describe("tuna eval tools (the CLI)", () => {
  it("prints accuracy, counts and error kinds as JSON; raw text predictions are parsed", () => {
    const ids = ["simple_python_0", "simple_python_1", "simple_python_2", "simple_python_3"];
    const cases = join(tmp, "cli-cases.jsonl");
    const answers = join(tmp, "cli-answers.jsonl");
    const preds = join(tmp, "cli-preds.jsonl");
    const sp = load("simple_python");
    writeFileSync(cases, ids.map((id) => JSON.stringify(sp.cases.get(id))).join("\n"));
    writeFileSync(
      answers,
      sp.answers
        .filter((a) => ids.includes(a.id))
        .map((a) => JSON.stringify(a))
        .join("\n"),
    );
    writeFileSync(
      preds,
      [
        { id: ids[0], tool_calls: [{ name: "calculate_triangle_area", arguments: { base: 10, height: 5 } }] },
        {
          id: ids[1],
          text: '<tool_call>\n{"name": "math.factorial", "arguments": {"number": 5}}\n</tool_call>',
        },
        { id: ids[2], text: '<tool_call>\n{"name": "math.hypot", "arguments": {"x": 4, "y": 5' },
        { id: ids[3], tool_calls: [] },
      ]
        .map((p) => JSON.stringify(p))
        .join("\n"),
    );
    const out = execFileSync(
      "node",
      [
        "bin/tuna.mjs",
        "eval",
        "tools",
        "--cases",
        cases,
        "--answers",
        answers,
        "--predictions",
        preds,
        "--details",
      ],
      { encoding: "utf8" },
    );
    const r = JSON.parse(out);
    expect(r).toMatchObject({
      accuracy: 0.5,
      total: 4,
      correct: 2,
      errors: { parse_error: 1, wrong_count: 1 },
    });
    expect(r.per_case.map((c: { correct: boolean }) => c.correct)).toEqual([true, true, false, false]);
  });
  it("a prediction for an id that is not a case is an error naming the file and line", () => {
    const preds = join(tmp, "cli-unknown.jsonl");
    writeFileSync(
      preds,
      `${JSON.stringify({ id: "simple_python_0", tool_calls: [] })}\n${JSON.stringify({ id: "nope", tool_calls: [] })}\n`,
    );
    let stderr = "";
    try {
      execFileSync(
        "node",
        ["bin/tuna.mjs", "eval", "tools", "--cases", `${DATA}/simple_python.jsonl`, "--predictions", preds],
        {
          encoding: "utf8",
          stdio: "pipe",
        },
      );
    } catch (e) {
      stderr = String((e as { stderr: string }).stderr);
    }
    expect(stderr).toContain("EVAL_UNKNOWN_ID");
    expect(stderr).toContain(`${preds}:2`);
  });
});
