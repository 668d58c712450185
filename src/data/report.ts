// What happened to every record: kept, or skipped with a reason. Nothing is dropped without a count here.
import { TunaError } from "../errors.ts";

/** One problem with one record: where it is, which field, what was expected and what was given. */
export interface Issue {
  /** Stable reason code, e.g. `invalid_json`, `role_order`, `tool_arguments`. */
  reason: string;
  /** `file:line` (or `file#row`). */
  source: string;
  /** Field path inside the record, e.g. `messages[2].tool_calls[0].function.arguments`; "" for the whole record. */
  path: string;
  message: string;
}

export function formatIssue(i: Issue): string {
  return `${i.source}${i.path ? ` ${i.path}` : ""}: ${i.message} [${i.reason}]`;
}

export interface ReasonCount {
  count: number;
  /** The first few examples, in reading order. */
  examples: Issue[];
}

export interface DataReportJSON {
  /** Records read (lines of JSONL, rows of CSV/Parquet, elements of a JSON array), blank lines excluded. */
  total: number;
  valid: number;
  skipped: number;
  blankLines: number;
  byKind: Record<string, number>;
  skippedByReason: Record<string, ReasonCount>;
  /** Counters of later stages: duplicates, redactions, filters, mixing. */
  stages: Record<string, Record<string, number>>;
}

/**
 * Accumulates counts while records stream through. `strict` turns the first issue into a thrown TunaError
 * (code DATA_INVALID) whose message names file:line, field path and what was expected.
 */
export class DataReport {
  total = 0;
  valid = 0;
  skipped = 0;
  blankLines = 0;
  readonly byKind: Record<string, number> = {};
  readonly skippedByReason: Record<string, ReasonCount> = {};
  readonly stages: Record<string, Record<string, number>> = {};

  constructor(readonly opts: { strict?: boolean; maxExamples?: number } = {}) {}

  /** A record that was read and accepted, of kind conversation / preference / text. */
  accept(kind: string): void {
    this.total++;
    this.valid++;
    this.byKind[kind] = (this.byKind[kind] ?? 0) + 1;
  }

  /** A record that was read and rejected. Only the first issue decides the reason; all go in examples. */
  reject(issues: Issue[]): void {
    if (issues.length === 0) throw new Error("reject() needs at least one issue");
    if (this.opts.strict) {
      const first = issues[0];
      throw new TunaError("DATA_INVALID", `${first.path ? `${first.path}: ` : ""}${first.message}`, {
        where: first.source,
        hint: `reason ${first.reason}; drop --strict (or set validation.strict: false) to skip such records and count them instead`,
      });
    }
    this.total++;
    this.skipped++;
    const reason = issues[0].reason;
    if (!this.skippedByReason[reason]) this.skippedByReason[reason] = { count: 0, examples: [] };
    const rc = this.skippedByReason[reason];
    rc.count++;
    if (rc.examples.length < (this.opts.maxExamples ?? 5)) rc.examples.push(issues[0]);
  }

  /** A record that was accepted earlier and removed by a later stage (duplicate, filter, …). */
  drop(stage: string, reason: string, n = 1): void {
    this.count(stage, reason, n);
  }

  count(stage: string, key: string, n = 1): void {
    if (!this.stages[stage]) this.stages[stage] = {};
    const s = this.stages[stage];
    s[key] = (s[key] ?? 0) + n;
  }

  toJSON(): DataReportJSON {
    return {
      total: this.total,
      valid: this.valid,
      skipped: this.skipped,
      blankLines: this.blankLines,
      byKind: { ...this.byKind },
      skippedByReason: structuredClone(this.skippedByReason),
      stages: structuredClone(this.stages),
    };
  }

  /** Human-readable summary for the CLI. */
  format(): string {
    const lines = [
      `records: ${this.total}  valid: ${this.valid}  skipped: ${this.skipped}${this.blankLines ? `  blank lines: ${this.blankLines}` : ""}`,
    ];
    const kinds = Object.entries(this.byKind);
    if (kinds.length) lines.push(`kinds: ${kinds.map(([k, v]) => `${k} ${v}`).join(", ")}`);
    const reasons = Object.entries(this.skippedByReason).sort((a, b) => b[1].count - a[1].count);
    if (reasons.length) lines.push("skipped by reason:");
    for (const [reason, rc] of reasons) {
      lines.push(`  ${reason}: ${rc.count}`);
      for (const ex of rc.examples) lines.push(`    ${formatIssue(ex)}`);
    }
    for (const [stage, counts] of Object.entries(this.stages)) {
      lines.push(
        `${stage}: ${Object.entries(counts)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ")}`,
      );
    }
    return lines.join("\n");
  }
}
