// LLM-as-judge through any OpenAI-compatible endpoint (POST {url}/chat/completions): the rubric from the
// config, the question, the reference and the model's answer go in; "SCORE: n" (0..max_score) comes out and
// is scaled to 0–1. A reply without a score is recorded as unscored (and counted), never guessed.
import { TunaError } from "../../errors.ts";
import type { EvalConfig } from "./config.ts";

export type JudgeConfig = NonNullable<EvalConfig["judge"]>;

export interface JudgeItem {
  question: string;
  reference: string;
  answer: string;
}

export interface JudgeVerdict {
  /** 0–1, or null when the reply had no score. */
  score: number | null;
  raw: string;
}

export function judgeMessages(cfg: JudgeConfig, item: JudgeItem): { role: string; content: string }[] {
  return [
    {
      role: "system",
      content:
        "You grade answers of a customer-service assistant against a reference answer.\n" +
        `Rubric:\n${cfg.rubric}\n\n` +
        `Give a one-sentence reason, then on the last line "SCORE: <n>" with n from 0 to ${cfg.max_score}.`,
    },
    {
      role: "user",
      content: `Question:\n${item.question}\n\nReference answer:\n${item.reference}\n\nAssistant's answer:\n${item.answer}`,
    },
  ];
}

/** The last "SCORE: n" of a reply, scaled to 0–1 and clamped; null if there is none. */
export function parseJudgeScore(reply: string, maxScore: number): number | null {
  const all = [...reply.matchAll(/score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)/gi)];
  if (all.length === 0) return null;
  const n = Number(all[all.length - 1][1]);
  return Math.min(1, Math.max(0, n / maxScore));
}

async function judgeOne(cfg: JudgeConfig, item: JudgeItem): Promise<JudgeVerdict> {
  const url = `${cfg.url.replace(/\/+$/, "")}/chat/completions`;
  const headers: Record<string, string> = { "content-type": "application/json" };
  const key = cfg.api_key_env ? process.env[cfg.api_key_env] : undefined;
  if (cfg.api_key_env && !key) {
    throw new TunaError("JUDGE_NO_KEY", `judge.api_key_env names ${cfg.api_key_env}, which is not set`, {
      hint: `export ${cfg.api_key_env}=<key>, or remove api_key_env for an endpoint without keys`,
    });
  }
  if (key) headers.authorization = `Bearer ${key}`;
  let res: Response;
  try {
    res = await fetch(url, {
      method: "POST",
      headers,
      body: JSON.stringify({ model: cfg.model, messages: judgeMessages(cfg, item), temperature: 0 }),
      signal: AbortSignal.timeout(cfg.timeout_s * 1000),
    });
  } catch (e) {
    throw new TunaError("JUDGE_UNREACHABLE", `the judge at ${url} did not answer: ${(e as Error).message}`, {
      hint: "check judge.url (an OpenAI-compatible base URL ending in /v1) and that the server is up",
      cause: e,
    });
  }
  const body = await res.text();
  if (!res.ok) {
    throw new TunaError("JUDGE_HTTP", `the judge at ${url} answered ${res.status}: ${body.slice(0, 300)}`, {
      hint: res.status === 401 ? "check the API key (judge.api_key_env)" : "check judge.url and judge.model",
    });
  }
  let content: unknown;
  try {
    content = (JSON.parse(body) as { choices?: { message?: { content?: unknown } }[] }).choices?.[0]?.message
      ?.content;
  } catch {
    content = undefined;
  }
  if (typeof content !== "string") {
    throw new TunaError(
      "JUDGE_BAD_REPLY",
      `the judge at ${url} sent no choices[0].message.content: ${body.slice(0, 300)}`,
      {
        hint: "the endpoint must speak the OpenAI chat completions API",
      },
    );
  }
  return { score: parseJudgeScore(content, cfg.max_score), raw: content };
}

/** Judges every item, `concurrency` at a time, in order. */
export async function judgeAll(
  cfg: JudgeConfig,
  items: readonly JudgeItem[],
  onDone?: (done: number) => void,
): Promise<JudgeVerdict[]> {
  const out: JudgeVerdict[] = new Array(items.length);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await judgeOne(cfg, items[i]);
      onDone?.(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency, items.length) }, worker));
  return out;
}
