// Download progress on stderr: one live line on a terminal (bar, bytes, rate, ETA), plain lines otherwise
// (one per finished file and one every `everyMs` for long downloads), so logs and CI stay readable.
import { formatDuration } from "../jobs/train/progress.ts";

export function formatBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export class DownloadProgress {
  private done = 0;
  private filesDone = 0;
  private lastDraw = 0;
  private lastPlain: number;
  private live = false;
  private readonly samples: [number, number][] = [];
  private readonly started = Date.now();

  constructor(
    private readonly totalBytes: number,
    private readonly totalFiles: number,
    private readonly out: NodeJS.WriteStream = process.stderr,
    private readonly everyMs = 10_000,
  ) {
    this.lastPlain = this.started;
  }

  /** Bytes per second over the last ~5 seconds. */
  rate(now = Date.now()): number {
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    if (this.samples.length < 2) return 0;
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : 0;
  }

  line(now = Date.now()): string {
    const r = this.rate(now);
    const left = Math.max(0, this.totalBytes - this.done);
    const frac = this.totalBytes > 0 ? Math.min(1, this.done / this.totalBytes) : 0;
    const width = 20;
    const filled = Math.round(width * frac);
    return [
      `${"█".repeat(filled)}${"░".repeat(width - filled)} ${(100 * frac).toFixed(0)}%`,
      `${formatBytes(this.done)}/${formatBytes(this.totalBytes)}`,
      `${formatBytes(r)}/s`,
      `ETA ${r > 0 ? formatDuration(left / r) : "?"}`,
      `file ${Math.min(this.filesDone + 1, this.totalFiles)}/${this.totalFiles}`,
    ].join(" │ ");
  }

  bytes(n: number): void {
    this.done += n;
    const now = Date.now();
    this.samples.push([now, this.done]);
    if (this.out.isTTY) {
      if (now - this.lastDraw >= 100) {
        this.out.write(`\r\x1b[2K${this.line(now)}`);
        this.lastDraw = now;
        this.live = true;
      }
    } else if (now - this.lastPlain >= this.everyMs) {
      this.out.write(`  ${this.line(now)}\n`);
      this.lastPlain = now;
    }
  }

  fileDone(path: string, size: number, fetched: number): void {
    this.filesDone++;
    const resumed = fetched < size ? ` (resumed: ${formatBytes(fetched)} fetched)` : "";
    this.say(`  ✓ ${path} ${formatBytes(size)}${resumed}`);
  }

  /** A message that must not be overwritten by the live line. */
  say(text: string): void {
    if (this.live) {
      this.out.write("\r\x1b[2K");
      this.live = false;
    }
    this.out.write(`${text}\n`);
  }

  end(): void {
    if (this.live) this.out.write("\r\x1b[2K");
    this.live = false;
  }
}
