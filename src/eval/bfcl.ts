// Tool-call correctness by the rules of the Berkeley Function Calling Leaderboard's AST checker
// (gorilla/berkeley-function-call-leaderboard, bfcl_eval/eval_checker/ast_eval/ast_checker.py), written anew.
//
// What a call must satisfy, in the order BFCL checks it (the first failure is the case's error kind):
//   wrong_count       simple/multiple cases need exactly as many calls as the ground truth has
//   wrong_func_name   the call names another function; names match exactly, or with "." written as "_"
//                     (BFCL renames `math.factorial` to `math_factorial` for APIs that forbid dots)
//   missing_required  a parameter in the schema's `required` list is absent
//   unexpected_param  a parameter that is not in the schema, or that the ground truth does not list
//   type_error        Python types: int is accepted for float, tuple is a list, array items are checked
//   value_error       not among the allowed values; strings compare after dropping " ,./-_*^", lowercasing
//                     and ' → " (so "April 1, 2024" = "april 1 2024"); dicts key by key, lists item by item
//   missing_optional  a ground-truth parameter without "" among its values was left out
// Parallel categories match calls to ground truths in any order; the others pair them by position.
// Irrelevance cases (no ground truth) are right only with no call at all.
//
// Additions to BFCL, so a fine-tuning team sees *why*: `unknown_tool` (a name not among the case's
// functions; BFCL folds it into wrong_func_name), `parse_error` (raw text whose tool-call block is not valid;
// BFCL fails the case as undecodable; on irrelevance cases BFCL would count it as "no call", we do not),
// `no_prediction`. Where BFCL's checker stops at one level of nesting, this one recurses (array items,
// declared dict properties, lists of dicts), and int is accepted for float inside arrays too.
import { z } from "zod";
import { isPlainObject, type PyType, pyEquals, pyType } from "./pyjson.ts";
import type { ParsedCall, ParseIssue } from "./qwen3-output.ts";

export const ParamSchema: z.ZodType<ParamSchema> = z.lazy(() =>
  z.looseObject({
    type: z.string(),
    items: ParamSchema.optional(),
    properties: z.record(z.string(), ParamSchema).optional(),
    required: z.array(z.string()).optional(),
  }),
);
export interface ParamSchema {
  type: string;
  items?: ParamSchema;
  properties?: Record<string, ParamSchema>;
  required?: string[];
  [k: string]: unknown;
}

export const FunctionDoc = z.object({
  name: z.string().min(1),
  description: z.string().optional(),
  parameters: z.looseObject({
    type: z.string(),
    properties: z.record(z.string(), ParamSchema).default({}),
    required: z.array(z.string()).default([]),
  }),
});
export type FunctionDoc = z.infer<typeof FunctionDoc>;

export const BfclCase = z.looseObject({
  id: z.string().min(1),
  question: z.unknown(),
  function: z.array(FunctionDoc),
});
export type BfclCase = z.infer<typeof BfclCase>;

/** `{fn: {arg: [allowed values]}}`, one per expected call. "" among the values: the argument may be omitted. */
export const BfclAnswer = z.object({
  id: z.string().min(1),
  ground_truth: z.array(z.record(z.string(), z.record(z.string(), z.array(z.unknown())))),
});
export type BfclAnswer = z.infer<typeof BfclAnswer>;
export type ExpectedCall = Record<string, Record<string, unknown[]>>;

export const ERROR_KINDS = [
  "parse_error",
  "no_prediction",
  "irrelevance_called",
  "unknown_tool",
  "wrong_count",
  "wrong_func_name",
  "missing_required",
  "unexpected_param",
  "type_error",
  "value_error",
  "missing_optional",
] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];

export interface CheckFailure {
  valid: false;
  kind: ErrorKind;
  /** BFCL-style sub-kind, e.g. "value_error:string", "type_error:nested", "parse_error:truncated_json". */
  detail: string;
  message: string;
}
export type CheckResult = { valid: true } | CheckFailure;

export interface CheckOptions {
  /** "either" (default): `a.b` also matches a call named `a_b`, as BFCL does for models that cannot emit dots. */
  dottedNames?: "either" | "exact";
  /** Match calls to ground truths in any order (BFCL's parallel categories). Default: from the category. */
  unordered?: boolean;
}

const OK: CheckResult = { valid: true };
const fail = (kind: ErrorKind, detail: string, message: string): CheckFailure => ({
  valid: false,
  kind,
  detail: `${kind}:${detail}`,
  message,
});
const show = (v: unknown) => JSON.stringify(v);

/** BFCL's category from a case id: `simple_python_12` → simple_python, `live_simple_3-2-0` → live_simple. */
export function categoryOf(id: string): string {
  return id.replace(/_[\d-]+$/, "");
}

export function nameMatches(
  expected: string,
  got: string,
  mode: CheckOptions["dottedNames"] = "either",
): boolean {
  return got === expected || (mode !== "exact" && got === expected.replaceAll(".", "_"));
}

/** BFCL's string normal form: drop spaces and , . / - _ * ^, lowercase, single quotes as double. */
export function standardizeString(s: string): string {
  return s
    .replace(/[ ,./\-_*^]/g, "")
    .toLowerCase()
    .replaceAll("'", '"');
}

/** Python type a declared BFCL type maps to (`any` and `tuple` as BFCL maps them: str and list). */
const DECLARED: Record<string, PyType> = {
  string: "str",
  integer: "int",
  float: "float",
  boolean: "bool",
  array: "list",
  tuple: "list",
  dict: "dict",
  any: "str",
};

function firstAllowedType(allowed: unknown[]): PyType | undefined {
  const first = allowed.find((a) => a !== "");
  return first === undefined ? undefined : pyType(first);
}

/** Does `value` have the declared type? Recurses into array items and declared dict properties. */
function typeCheck(param: string, value: unknown, schema: ParamSchema): CheckResult {
  const want = DECLARED[schema.type];
  if (want === undefined) return OK; // a type BFCL's Python checker has no entry for: nothing to check
  const got = pyType(value);
  if (got !== want && !(want === "float" && got === "int")) {
    return fail("type_error", "simple", `${param}: expected ${schema.type}, got ${got} ${show(value)}`);
  }
  if (want === "list" && schema.items && Array.isArray(value)) {
    for (const [i, item] of value.entries()) {
      const r = typeCheck(`${param}[${i}]`, item, schema.items);
      if (!r.valid) return fail("type_error", "nested", r.message);
    }
  }
  if (want === "dict" && schema.properties && isPlainObject(value)) {
    for (const [k, v] of Object.entries(value)) {
      const sub = schema.properties[k];
      if (!sub) continue; // unknown keys are the value check's business (the ground truth lists the keys)
      const r = typeCheck(`${param}.${k}`, v, sub);
      if (!r.valid) return fail("type_error", "nested", r.message);
    }
  }
  return OK;
}

/** Literal comparison with BFCL's string normal form applied at every depth. */
function sameValue(value: unknown, allowed: unknown): boolean {
  if (typeof value === "string" && typeof allowed === "string") {
    return standardizeString(value) === standardizeString(allowed);
  }
  if (Array.isArray(value) && Array.isArray(allowed)) {
    return value.length === allowed.length && value.every((v, i) => sameValue(v, allowed[i]));
  }
  if (isPlainObject(value) && isPlainObject(allowed)) {
    const keys = Object.keys(value);
    return (
      keys.length === Object.keys(allowed).length &&
      keys.every((k) => Object.hasOwn(allowed, k) && sameValue(value[k], allowed[k]))
    );
  }
  return pyEquals(value, allowed);
}

/** A ground-truth dict value is written `{key: [allowed values]}`. */
function isAllowedDict(v: unknown): v is Record<string, unknown[]> {
  return isPlainObject(v) && Object.values(v).every(Array.isArray);
}

/** `value` (a dict) against one `{key: [allowed]}`; undefined when it matches, else why not. */
function dictMismatch(
  param: string,
  value: Record<string, unknown>,
  allowed: Record<string, unknown[]>,
  schema: ParamSchema | undefined,
): CheckFailure | undefined {
  for (const [k, v] of Object.entries(value)) {
    if (!Object.hasOwn(allowed, k))
      return fail("value_error", "dict_key", `${param}: unexpected key ${show(k)}`);
    if (!matchesOneOf(v, allowed[k], schema?.properties?.[k])) {
      return fail(
        "value_error",
        "dict_value",
        `${param}.${k}: ${show(v)} is not one of ${show(allowed[k].filter((a) => a !== ""))}`,
      );
    }
  }
  for (const [k, values] of Object.entries(allowed)) {
    if (!Object.hasOwn(value, k) && !values.includes("")) {
      return fail("value_error", "dict_key", `${param}: missing key ${show(k)}`);
    }
  }
  return undefined;
}

/** Does `value` match one of the allowed values ("" entries mean "may be omitted" and match nothing)? */
function matchesOneOf(value: unknown, allowed: unknown[], schema: ParamSchema | undefined): boolean {
  for (const a of allowed) {
    if (a === "") continue;
    if (schema?.type === "dict" && isPlainObject(value) && isAllowedDict(a)) {
      if (dictMismatch("", value, a, schema) === undefined) return true;
      continue;
    }
    if (
      Array.isArray(value) &&
      Array.isArray(a) &&
      schema?.items?.type === "dict" &&
      a.every((x) => x === "" || isAllowedDict(x))
    ) {
      const items = schema.items;
      if (
        a.length === value.length &&
        value.every(
          (v, i) =>
            isPlainObject(v) && dictMismatch("", v, a[i] as Record<string, unknown[]>, items) === undefined,
        )
      ) {
        return true;
      }
      continue;
    }
    if (sameValue(value, a)) return true;
  }
  return false;
}

/** BFCL's live_simple 106 and 112 write `[]` (no allowed value at all, so no answer could pass) where the
 * empty list is meant; for a list-typed parameter, `[]` is read as `[[]]`. */
function allowedFor(schema: ParamSchema | undefined, allowed: unknown[] | undefined): unknown[] | undefined {
  if (allowed?.length === 0 && (schema?.type === "array" || schema?.type === "tuple")) return [[]];
  return allowed;
}

/** One call against one expected call of a function whose schema is `doc`. */
export function checkCall(
  doc: FunctionDoc,
  call: ParsedCall,
  expected: ExpectedCall,
  opts: CheckOptions = {},
): CheckResult {
  const [expectedName, allowedArgs] = Object.entries(expected)[0] ?? [];
  if (expectedName === undefined || allowedArgs === undefined) {
    return fail("wrong_func_name", "no_ground_truth", "ground truth names no function");
  }
  if (!nameMatches(expectedName, call.name, opts.dottedNames)) {
    return fail("wrong_func_name", "simple", `called ${show(call.name)}, expected ${show(expectedName)}`);
  }
  const props = doc.parameters.properties;
  const args = call.arguments;
  for (const p of doc.parameters.required) {
    if (!Object.hasOwn(args, p))
      return fail("missing_required", "simple", `${call.name}: missing required ${show(p)}`);
  }
  for (const [p, value] of Object.entries(args)) {
    const schema = props[p];
    const allowed = allowedFor(schema, allowedArgs[p]);
    if (schema === undefined || allowed === undefined) {
      return fail("unexpected_param", "simple", `${call.name}: unexpected parameter ${show(p)}`);
    }
    // BFCL's "variable" case: the ground truth holds a value of another type than the schema declares (a
    // variable name where a number is due, say); then that type is accepted too and compared literally.
    const gtType = firstAllowedType(allowed);
    const declared = DECLARED[schema.type];
    const isVariable = gtType !== undefined && declared !== undefined && gtType !== declared;
    if (!(isVariable && pyType(value) === gtType)) {
      const t = typeCheck(`${call.name}.${p}`, value, schema);
      if (!t.valid) return t;
    }
    const ok = isVariable
      ? allowed.some((a) => a !== "" && pyEquals(value, a))
      : matchesOneOf(value, allowed, schema);
    if (!ok) {
      const detail = isPlainObject(value)
        ? "dict"
        : Array.isArray(value)
          ? "list"
          : typeof value === "string"
            ? "string"
            : "others";
      const why =
        isPlainObject(value) && !isVariable
          ? allowed.filter(isAllowedDict).map((a) => dictMismatch(p, value, a, schema)?.message)[0]
          : undefined;
      return fail(
        "value_error",
        detail,
        `${call.name}.${p}: ${show(value)} is not one of ${show(allowed.filter((a) => a !== ""))}${why ? ` (${why})` : ""}`,
      );
    }
  }
  for (const [p, allowed] of Object.entries(allowedArgs)) {
    if (!Object.hasOwn(args, p) && !allowed.includes("")) {
      return fail(
        "missing_optional",
        "simple",
        `${call.name}: ${show(p)} is left out but the answer needs it`,
      );
    }
  }
  return OK;
}

export interface CaseInput {
  case: BfclCase;
  /** undefined = no call expected (irrelevance). */
  groundTruth?: ExpectedCall[];
  /** The prediction's calls, or undefined when there is no prediction for this case. */
  calls?: ParsedCall[];
  /** Issues from parsing raw text (any makes the case a parse_error). */
  parseErrors?: ParseIssue[];
}

/** A whole case: irrelevance, count, names, then each call (ordered or not, see CheckOptions). */
export function checkCase(input: CaseInput, opts: CheckOptions = {}): CheckResult {
  const { case: c, groundTruth, calls, parseErrors } = input;
  if (calls === undefined) return fail("no_prediction", "simple", `no prediction for ${c.id}`);
  if (parseErrors && parseErrors.length > 0) {
    const e = parseErrors[0];
    return fail("parse_error", e.kind, e.message);
  }
  if (groundTruth === undefined || groundTruth.length === 0) {
    if (calls.length === 0) return OK;
    return fail(
      "irrelevance_called",
      "simple",
      `no call was due, got ${calls.map((x) => x.name).join(", ")}`,
    );
  }
  const known = c.function.map((f) => f.name);
  for (const call of calls) {
    if (!known.some((n) => nameMatches(n, call.name, opts.dottedNames))) {
      return fail(
        "unknown_tool",
        "simple",
        `${show(call.name)} is not among the case's functions ${show(known)}`,
      );
    }
  }
  if (calls.length !== groundTruth.length) {
    return fail("wrong_count", "simple", `${calls.length} calls, expected ${groundTruth.length}`);
  }
  const docFor = (name: string): FunctionDoc | undefined => c.function.find((f) => f.name === name);
  const unordered = opts.unordered ?? categoryOf(c.id).includes("parallel");
  if (!unordered) {
    for (const [i, expected] of groundTruth.entries()) {
      const name = Object.keys(expected)[0];
      const doc = docFor(name);
      if (!doc)
        return fail("wrong_func_name", "no_schema", `ground truth calls ${show(name)}, not in the case`);
      const r = checkCall(doc, calls[i], expected, opts);
      if (!r.valid) return r;
    }
    return OK;
  }
  // Any order: each expected call takes the first unmatched call that passes; when none does, report the
  // failure of a call to the same function (the informative one) or else a name mismatch.
  const used = new Set<number>();
  for (const expected of groundTruth) {
    const name = Object.keys(expected)[0];
    const doc = docFor(name);
    if (!doc)
      return fail("wrong_func_name", "no_schema", `ground truth calls ${show(name)}, not in the case`);
    let best: CheckFailure | undefined;
    let matched = -1;
    for (const [j, call] of calls.entries()) {
      if (used.has(j)) continue;
      const r = checkCall(doc, call, expected, opts);
      if (r.valid) {
        matched = j;
        break;
      }
      if (!best || (best.kind === "wrong_func_name" && r.kind !== "wrong_func_name")) best = r;
    }
    if (matched === -1) {
      return best ?? fail("wrong_count", "parallel", `no call left for ${show(name)}`);
    }
    used.add(matched);
  }
  return OK;
}
