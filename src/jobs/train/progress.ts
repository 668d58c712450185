// The live progress line of a training run, built from engine step events.
import type { EngineEvent } from "../../engine/protocol.ts";

export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}

const fmtInt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function progressLine(e: Extract<EngineEvent, { event: "step" }>): string {
  const width = 20;
  const filled = Math.round((width * e.step) / Math.max(1, e.total_steps));
  const bar = `${"█".repeat(filled)}${"░".repeat(width - filled)}`;
  const parts = [
    `${bar} step ${e.step}/${e.total_steps}`,
    `loss ${e.loss.toFixed(4)}`,
    `lr ${e.lr.toExponential(2)}`,
    `${fmtInt.format(e.tokens_per_s)} tok/s`,
    `ETA ${formatDuration(e.eta_s)}`,
  ];
  if (e.memory_gib !== null) parts.push(`mem ${e.memory_gib.toFixed(1)} GiB`);
  return parts.join(" │ ");
}

/** Writes progress to stderr: one rewritten line on a terminal, one line per event otherwise (logs, CI). */
export class ProgressPrinter {
  private live = false;
  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  step(e: Extract<EngineEvent, { event: "step" }>): void {
    const line = progressLine(e);
    if (this.out.isTTY) {
      this.out.write(`\r\x1b[2K${line}`);
      this.live = true;
    } else {
      this.out.write(`${line}\n`);
    }
  }

  /** A message that must not be overwritten by the live line. */
  say(text: string): void {
    if (this.live) {
      this.out.write("\n");
      this.live = false;
    }
    this.out.write(`${text}\n`);
  }

  end(): void {
    if (this.live) this.out.write("\n");
    this.live = false;
  }
}
