// JSON with Python's view of numbers. BFCL's checker runs in Python, where `json.loads("5.0")` is a float and
// `5` an int, and an `integer` parameter given `5.0` is a type error. JavaScript's JSON.parse loses that, so
// model outputs and ground truths go through this parser: a number literal with a fraction or exponent whose
// value is integral comes back as a `PyFloat`; every other value is the plain JavaScript one.
//
// The parser also says *where* and *why* text is not JSON, and whether it simply ran out (truncated output).

/** A float literal with an integral value (`5.0`, `1e3`): a JS number would read as a Python int. */
export class PyFloat {
  constructor(readonly value: number) {}
  toJSON(): number {
    return this.value;
  }
}

export type PyType = "int" | "float" | "bool" | "str" | "list" | "dict" | "none";

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof PyFloat);
}

/** The Python type `json.loads` would give this value. */
export function pyType(v: unknown): PyType {
  if (v === null || v === undefined) return "none";
  if (v instanceof PyFloat) return "float";
  if (typeof v === "boolean") return "bool";
  if (typeof v === "number") return Number.isInteger(v) ? "int" : "float";
  if (typeof v === "string") return "str";
  if (Array.isArray(v)) return "list";
  return "dict";
}

export function pyNumber(v: unknown): number | undefined {
  if (v instanceof PyFloat) return v.value;
  return typeof v === "number" ? v : undefined;
}

/** Python `==` on JSON values (1 == 1.0; bool and number are kept apart, unlike Python's True == 1). */
export function pyEquals(a: unknown, b: unknown): boolean {
  const na = pyNumber(a);
  const nb = pyNumber(b);
  if (na !== undefined || nb !== undefined) return na !== undefined && nb !== undefined && na === nb;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => pyEquals(x, b[i]));
  }
  if (isPlainObject(a) || isPlainObject(b)) {
    if (!isPlainObject(a) || !isPlainObject(b)) return false;
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    return ka.every((k) => Object.hasOwn(b, k) && pyEquals(a[k], b[k]));
  }
  return a === b;
}

/** Converts PyFloat back to numbers (for printing, hashing, handing to code that expects plain JSON). */
export function toPlain(v: unknown): unknown {
  if (v instanceof PyFloat) return v.value;
  if (Array.isArray(v)) return v.map(toPlain);
  if (isPlainObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toPlain(x)]));
  return v;
}

export class PyJsonError extends Error {
  constructor(
    message: string,
    /** Character offset of the problem. */
    readonly offset: number,
    /** True when the text ended before the value did: the usual sign of a cut-off generation. */
    readonly truncated: boolean,
  ) {
    super(message);
    this.name = "PyJsonError";
  }
}

const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;

/** Strict JSON (RFC 8259), numbers as described above. Throws PyJsonError. */
export function parsePyJson(text: string): unknown {
  let i = 0;
  const fail = (what: string): never => {
    const truncated = i >= text.length;
    const found = truncated ? "end of text" : JSON.stringify(text.slice(i, i + 12));
    throw new PyJsonError(`expected ${what} at offset ${i}, found ${found}`, i, truncated);
  };
  const ws = () => {
    while (i < text.length && (text[i] === " " || text[i] === "\n" || text[i] === "\r" || text[i] === "\t"))
      i++;
  };
  const literal = (word: string, value: unknown): unknown => {
    for (let k = 0; k < word.length; k++, i++) if (text[i] !== word[k]) fail(`"${word}"`);
    return value;
  };
  const str = (): string => {
    i++; // opening quote
    let out = "";
    for (;;) {
      if (i >= text.length) fail('closing "');
      const c = text[i];
      if (c === '"') {
        i++;
        return out;
      }
      if (c === "\\") {
        const e = text[i + 1];
        if (e === undefined) {
          i++;
          fail("an escape");
        }
        const simple: Record<string, string> = {
          '"': '"',
          "\\": "\\",
          "/": "/",
          b: "\b",
          f: "\f",
          n: "\n",
          r: "\r",
          t: "\t",
        };
        if (e in simple) {
          out += simple[e];
          i += 2;
        } else if (e === "u") {
          const hex = text.slice(i + 2, i + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
            i += 2;
            fail("4 hex digits");
          }
          out += String.fromCharCode(Number.parseInt(hex, 16));
          i += 6;
        } else {
          i++;
          fail("a valid escape");
        }
      } else if (c < " ") {
        fail("no raw control character in a string");
      } else {
        out += c;
        i++;
      }
    }
  };
  const value = (): unknown => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj: Record<string, unknown> = {};
      ws();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("a string key");
        const k = str();
        ws();
        if (text[i] !== ":") fail('":"');
        i++;
        obj[k] = value();
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return obj;
        }
        fail('"," or "}"');
      }
    }
    if (c === "[") {
      i++;
      const arr: unknown[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        fail('"," or "]"');
      }
    }
    if (c === '"') return str();
    if (c === "t") return literal("true", true);
    if (c === "f") return literal("false", false);
    if (c === "n") return literal("null", null);
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) return fail("a JSON value");
    i += m[0].length;
    const n = Number(m[0]);
    return (m[1] !== undefined || m[2] !== undefined) && Number.isInteger(n) ? new PyFloat(n) : n;
  };
  const v = value();
  ws();
  if (i < text.length) fail("end of text");
  return v;
}
