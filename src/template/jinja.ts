// @huggingface/jinja with the Python semantics transformers' jinja2 has where chat templates depend on them.
//
// Differences found by the golden test (test/template.golden.test.ts) and fixed here, without touching the
// model's template text:
// - `s.strip(chars)`, `s.lstrip(chars)`, `s.rstrip(chars)`: @huggingface/jinja ignores `chars` and trims all
//   JavaScript whitespace. Qwen3 writes `content.lstrip('\n')`, so an answer starting with "\n  text" lost its
//   indentation. Here they strip exactly `chars`, or Python's whitespace set (str.isspace) when none is given.
//
// Known and not fixable here (documented in docs/templates.md): `tojson` of a float with an integral value
// (Python `1.0` → "1.0") renders "1" because a JavaScript number does not remember it was written as a float.
import { setFlagsFromString } from "node:v8";
import * as jinja from "@huggingface/jinja";

// Speed, not semantics: @huggingface/jinja's runtime values are instances of about ten subclasses of one base
// class, so the base's field initializers (`type`, `value`) see about ten object shapes. V8's inline caches give
// up on more than 4 shapes (megamorphic), which made every value construction ~10x slower: ≈ 45% of render
// time in a profile (bench/prepare/stages.ts). Allowing 16 shapes keeps those sites polymorphic. The flag is
// process-wide (worker threads included) and changes no result; it takes effect for code not yet megamorphic,
// so it is set here, before the first render.
setFlagsFromString("--max-valid-polymorphic-map-count=16");

// The package's .d.ts files import "./runtime" without an extension, which NodeNext resolution cannot follow,
// so its runtime classes are typed here: only what this file uses.
interface Value {
  type: string;
  value: unknown;
}
type Statement = { type: string } | undefined;
interface Environment {
  variables: Map<string, Value>;
  set(name: string, value: unknown): Value;
}
interface InterpreterLike {
  evaluate(statement: Statement, environment: Environment): Value;
  run(program: unknown): Value;
}
const Environment = jinja.Environment as unknown as new (parent?: Environment) => Environment;
const Interpreter = jinja.Interpreter as unknown as new (env?: Environment) => InterpreterLike;
const Template = jinja.Template;
type Template = jinja.Template;

// The runtime value classes are not exported by the package; take their constructors from values it makes.
const probe = new Environment();
const StringValueCtor = probe.set("s", "").constructor as new (v: string) => Value;
const FunctionValueCtor = probe.set("f", () => undefined).constructor as new (
  fn: (args: Value[], scope: Environment) => Value,
) => Value;

/** Python's str.isspace() characters (what str.strip() removes with no argument). */
const PY_WHITESPACE = new Set(
  " \t\n\v\f\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000",
);

/** PY_WHITESPACE as a table over UTF-16 units (all of them are BMP code points, none a surrogate). */
const PY_WHITESPACE_UNIT = (() => {
  const t = new Uint8Array(0x3001);
  for (const c of PY_WHITESPACE) t[c.charCodeAt(0)] = 1;
  return t;
})();

const hasSurrogate = (s: string) => /[\ud800-\udfff]/.test(s);

/** Python str.strip/lstrip/rstrip. `chars` is a set of characters (code points), undefined = whitespace. */
export function pyStrip(s: string, chars: string | undefined, left: boolean, right: boolean): string {
  // Scanning the ends by UTF-16 unit is exact when the set has no surrogates: a unit of an astral character (or
  // a lone surrogate) in `s` is then never in the set, just as its code point is not.
  if (chars === undefined || !hasSurrogate(chars)) {
    let a = 0;
    let b = s.length;
    if (chars === undefined) {
      const ws = PY_WHITESPACE_UNIT;
      if (left) while (a < b && ws[s.charCodeAt(a)] === 1) a++;
      if (right) while (b > a && ws[s.charCodeAt(b - 1)] === 1) b--;
    } else {
      if (left) while (a < b && chars.includes(s[a])) a++;
      if (right) while (b > a && chars.includes(s[b - 1])) b--;
    }
    return a === 0 && b === s.length ? s : s.slice(a, b);
  }
  const set = new Set(chars);
  const cps = Array.from(s);
  let a = 0;
  let b = cps.length;
  if (left) while (a < b && set.has(cps[a])) a++;
  if (right) while (b > a && set.has(cps[b - 1])) b--;
  return cps.slice(a, b).join("");
}

const STRIPS: Record<string, [boolean, boolean]> = {
  strip: [true, true],
  lstrip: [true, false],
  rstrip: [false, true],
};

class PythonCompatInterpreter extends Interpreter {
  override evaluate(statement: Statement, environment: Environment): Value {
    if (statement?.type === "MemberExpression") {
      const m = statement as unknown as {
        computed: boolean;
        object: Statement;
        property: { type: string; value: unknown };
      };
      const sides =
        !m.computed && m.property.type === "Identifier" ? STRIPS[m.property.value as string] : undefined;
      if (sides) {
        const object = this.evaluate(m.object, environment);
        if (object.type === "StringValue") {
          const s = object.value as string;
          return new FunctionValueCtor((args) => {
            const arg = args[0];
            if (args.length > 1) throw new Error(`${m.property.value}() takes at most one argument`);
            let chars: string | undefined;
            if (arg === undefined || arg.type === "NullValue") chars = undefined;
            else if (arg.type === "StringValue") chars = arg.value as string;
            else throw new Error(`${m.property.value}() argument must be a string or none, got ${arg.type}`);
            return new StringValueCtor(pyStrip(s, chars, sides[0], sides[1]));
          });
        }
      }
    }
    return super.evaluate(statement, environment);
  }
}

/**
 * The globals @huggingface/jinja's own Template.render sets up (`range`, `strftime_now`, `raise_exception`,
 * true/false/none). Its setupGlobals is not exported at runtime, so one tiny render hands them over: a JS
 * function called from a template receives the runtime values' raw `.value`, which for a function is the
 * package's own implementation.
 */
function packageGlobals(): Map<string, Value> {
  const names = ["range", "strftime_now", "raise_exception"] as const;
  const captured = new Map<string, Value>();
  new Template(`{{ capture(${names.join(", ")}) }}`).render({
    capture: (...fns: ((args: Value[], scope: Environment) => Value)[]) => {
      for (const [i, fn] of fns.entries()) captured.set(names[i], new FunctionValueCtor(fn));
      return "";
    },
  });
  for (const n of names) if (!captured.has(n)) throw new Error(`@huggingface/jinja global ${n} not found`);
  const env = new Environment();
  for (const [k, v] of [
    ["false", false],
    ["true", true],
    ["none", null],
    ["False", false],
    ["True", true],
    ["None", null],
  ] as const) {
    captured.set(k, env.set(k, v));
  }
  return captured;
}

const GLOBALS = packageGlobals();

/** Render a parsed template with Python-compatible string methods. */
export function renderPythonCompat(template: Template, vars: Record<string, unknown>): string {
  const env = new Environment();
  for (const [k, v] of GLOBALS) env.variables.set(k, v);
  for (const [k, v] of Object.entries(vars)) env.set(k, v);
  const result = new PythonCompatInterpreter(env).run(template.parsed);
  return result.value as string;
}
