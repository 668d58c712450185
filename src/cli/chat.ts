// `tuna chat <model-dir> [--adapter <dir>]`: an interactive terminal chat, streamed. In a terminal Ctrl-C
// stops the current answer (a cancel request to the engine) and, at an empty prompt, quits; with stdin piped,
// lines are read and answered in order until EOF (scripts and tests), and SIGINT does the same.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Command } from "commander";
import { loadChatModel, resolveAdapterDir, startGenerator } from "../engine/generate.ts";
import { TunaError } from "../errors.ts";
import { ChatSession, readToolsFile } from "../jobs/chat/session.ts";

interface ChatOpts {
  adapter?: string;
  think: string;
  system?: string;
  tools?: string;
  raw?: boolean;
  maxNewTokens: string;
  temperature: string;
  topP: string;
  topK: string;
  repetitionPenalty: string;
  seed?: string;
  maxModelLen?: string;
  device: string;
  dtype: string;
}

// A chat's KV cache is allocated once for its whole length; 32k tokens of Qwen3-8B is 4.5 GiB.
const CHAT_CONTEXT_CAP = 32768;

function defaultChatContext(modelDir: string): number {
  const path = join(modelDir, "config.json");
  let max: unknown;
  try {
    max = (JSON.parse(readFileSync(path, "utf8")) as { max_position_embeddings?: unknown })
      .max_position_embeddings;
  } catch {
    return CHAT_CONTEXT_CAP; // a missing or broken config.json is reported by the engine when it loads the model
  }
  return typeof max === "number" && Number.isInteger(max) && max > 0
    ? Math.min(max, CHAT_CONTEXT_CAP)
    : CHAT_CONTEXT_CAP;
}

function num(name: string, v: string, check: (x: number) => boolean, expected: string): number {
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x) || !check(x)) {
    throw new TunaError("BAD_OPTION", `${name} ${JSON.stringify(v)} is not ${expected}`);
  }
  return x;
}

function choice<T extends string>(name: string, v: string, allowed: readonly T[]): T {
  if (!allowed.includes(v as T)) {
    throw new TunaError("BAD_OPTION", `${name} ${JSON.stringify(v)} is not one of ${allowed.join(", ")}`);
  }
  return v as T;
}

export function register(program: Command): void {
  program
    .command("chat <model-dir>")
    .description(
      "Chat with a model (and optionally a LoRA adapter) in the terminal, streamed.\n" +
        "Commands: /think on|off, /system <text>, /tools <file.json>|off, /reset, /raw on|off, /help, /exit.\n" +
        "Ctrl-C stops the current answer; at an empty prompt it quits. With stdin piped, each line is one message.",
    )
    .option("--adapter <dir>", "a run directory (runs/<id>) or a PEFT adapter directory")
    .option("--think <on|off>", "thinking mode at start", "on")
    .option("--system <text>", "system prompt")
    .option("--tools <file.json>", "tools to offer (OpenAI form)")
    .option("--raw", "show raw output, tool-call tags included")
    .option("--max-new-tokens <n>", "longest answer in tokens", "512")
    .option("--temperature <t>", "sampling temperature (0 = greedy)", "0.7")
    .option("--top-p <p>", "nucleus sampling", "0.8")
    .option("--top-k <k>", "top-k sampling (0 = off)", "20")
    .option("--repetition-penalty <x>", "repetition penalty (1 = off)", "1")
    .option("--seed <n>", "sampling seed")
    .option(
      "--max-model-len <n>",
      `longest conversation in tokens (prompt + answer; the KV cache is sized for it). Default: the model's max_position_embeddings, at most ${CHAT_CONTEXT_CAP}`,
    )
    .option("--device <device>", "auto, cpu or cuda", "auto")
    .option("--dtype <dtype>", "auto, float32, bfloat16 or float16", "auto")
    .action(async (modelDir: string, o: ChatOpts) => {
      const thinking = choice("--think", o.think, ["on", "off"] as const) === "on";
      const sampling = {
        maxNewTokens: num(
          "--max-new-tokens",
          o.maxNewTokens,
          (x) => Number.isInteger(x) && x > 0,
          "a positive integer",
        ),
        temperature: num("--temperature", o.temperature, (x) => x >= 0, "a number ≥ 0"),
        topP: num("--top-p", o.topP, (x) => x > 0 && x <= 1, "a number in (0, 1]"),
        topK: num("--top-k", o.topK, (x) => Number.isInteger(x) && x >= 0, "an integer ≥ 0"),
        repetitionPenalty: num("--repetition-penalty", o.repetitionPenalty, (x) => x > 0, "a number > 0"),
        seed: o.seed === undefined ? null : num("--seed", o.seed, Number.isInteger, "an integer"),
      };
      const device = choice("--device", o.device, ["auto", "cpu", "cuda"] as const);
      const dtype = choice("--dtype", o.dtype, ["auto", "float32", "bfloat16", "float16"] as const);
      const tools = o.tools ? readToolsFile(o.tools) : undefined;
      const adapterDir = o.adapter ? resolveAdapterDir(o.adapter) : undefined;
      const model = await loadChatModel(modelDir);
      const tty = process.stdin.isTTY === true;
      process.stderr.write(`loading ${modelDir}${adapterDir ? ` with adapter ${adapterDir}` : ""}…\n`);
      const gen = await startGenerator({
        modelDir,
        adapters: adapterDir ? { adapter: adapterDir } : {},
        device,
        dtype,
        maxBatchSize: 1,
        maxModelLen:
          o.maxModelLen === undefined
            ? defaultChatContext(modelDir)
            : num(
                "--max-model-len",
                o.maxModelLen,
                (x) => Number.isInteger(x) && x > 0,
                "a positive integer",
              ),
      });
      const write = (s: string) => {
        if (s) process.stdout.write(s);
      };
      const session = new ChatSession({
        gen,
        model,
        adapter: adapterDir ? "adapter" : null,
        sampling,
        thinking,
        system: o.system,
        tools,
        raw: o.raw,
        write,
      });
      process.stderr.write(
        `ready on ${gen.device} (${gen.dtype}); ${session.status()}. /help lists commands.\n`,
      );

      const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: tty });
      rl.setPrompt("you> ");
      const queue: string[] = [];
      let running = false;
      let closing = false;
      let inputEnded = false;
      let finish!: () => void;
      const finished = new Promise<void>((r) => {
        finish = r;
      });
      const quit = () => {
        if (closing) return;
        closing = true;
        rl.close();
        finish();
      };
      const prompt = () => {
        if (tty && !closing) rl.prompt();
      };
      const drain = async () => {
        if (running) return;
        running = true;
        while (queue.length > 0 && !closing) {
          const line = queue.shift()!;
          if (!tty && line.trim() !== "") write(`you> ${line}\n`);
          if ((await session.handle(line)) === "exit") {
            quit();
            break;
          }
          prompt();
        }
        running = false;
        if (inputEnded) quit();
      };
      const interrupt = () => {
        if (session.cancel()) return; // stops the answer; the prompt comes back when it has ended
        if (!tty || rl.line === "") {
          write("\n");
          quit();
          return;
        }
        // Text typed at the prompt: drop it, as shells do.
        write("^C\n");
        rl.write(null, { ctrl: true, name: "u" });
        prompt();
      };
      rl.on("line", (line) => {
        queue.push(line);
        void drain();
      });
      rl.on("close", () => {
        inputEnded = true;
        if (!running) quit();
      });
      rl.on("SIGINT", interrupt); // terminal: Ctrl-C read as a key in raw mode
      process.on("SIGINT", interrupt); // piped stdin: a real signal
      prompt();
      await finished;
      process.off("SIGINT", interrupt);
      await gen.close();
    });
}
