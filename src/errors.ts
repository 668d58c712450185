// One error type for everything a user can cause or meet. `code` is stable (tests and the HTTP API match on
// it); `message` names the file, line and field where there is one; `hint` says what to do about it.

export class TunaError extends Error {
  readonly code: string;
  readonly hint?: string;
  readonly where?: string;

  constructor(code: string, message: string, opts: { hint?: string; where?: string; cause?: unknown } = {}) {
    super(opts.where ? `${opts.where}: ${message}` : message, { cause: opts.cause });
    this.name = "TunaError";
    this.code = code;
    this.hint = opts.hint;
    this.where = opts.where;
  }
}

export function isTunaError(e: unknown): e is TunaError {
  return e instanceof TunaError;
}

/** `file:line` for messages; line is 1-based. */
export function at(file: string, line?: number): string {
  return line === undefined ? file : `${file}:${line}`;
}
