// Records written one JSON line at a time, so that a file of any size goes out without being held: lines collect in
// a 1 MiB buffer that is written when full. The file appears under its name only at finish() (written as
// `<name>.partial` until then, removed by abort()), so a preparation that fails leaves no half file that looks
// whole. Nothing is created for zero records.
import { closeSync, openSync, renameSync, rmSync, writeSync } from "node:fs";

const BUFFER = 1 << 20;

export class JsonlWriter {
  private fd: number | null = null;
  private buf = Buffer.allocUnsafe(BUFFER);
  private used = 0;
  count = 0;

  constructor(readonly path: string) {}

  private get partial(): string {
    return `${this.path}.partial`;
  }

  /** Appends `JSON.stringify(record)` and a newline. */
  write(record: unknown): void {
    const line = `${JSON.stringify(record)}\n`;
    const bytes = Buffer.byteLength(line);
    if (this.used + bytes > this.buf.length) {
      this.flush();
      if (bytes > this.buf.length) this.buf = Buffer.allocUnsafe(bytes);
    }
    this.used += this.buf.write(line, this.used);
    this.count++;
  }

  private flush(): void {
    if (this.used === 0) return;
    this.fd ??= openSync(this.partial, "w");
    let done = 0;
    while (done < this.used) done += writeSync(this.fd, this.buf, done, this.used - done);
    this.used = 0;
  }

  /** Writes what is buffered and gives the file its name; returns the record count (0: no file). */
  finish(): number {
    if (this.count === 0) return 0;
    this.flush();
    closeSync(this.fd as number);
    this.fd = null;
    renameSync(this.partial, this.path);
    return this.count;
  }

  /** Drops the partial file (after a failure). */
  abort(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    rmSync(this.partial, { force: true });
  }
}
