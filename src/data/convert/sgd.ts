// Schema-Guided Dialogue → multi-turn tool-calling conversations.
// Tools: every intent of the dialogue's services, its slots as string parameters (categorical slots as
// enums, required_slots required, optional_slots with their default). A SYSTEM turn whose frame has a
// `service_call` becomes an assistant tool call, its `service_results` a tool message (JSON list), and the
// system utterance the assistant reply that follows. USER turns are user messages.
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { TunaError } from "../../errors.ts";
import type { Tool } from "../conversation.ts";
import { type ConvertReport, type OpenAIMessage, type OpenAIRecord, skip } from "./common.ts";

interface Slot {
  name: string;
  description: string;
  is_categorical: boolean;
  possible_values: string[];
}
interface Intent {
  name: string;
  description: string;
  required_slots: string[];
  optional_slots: Record<string, string>;
}
interface Service {
  service_name: string;
  description: string;
  slots: Slot[];
  intents: Intent[];
}
interface Frame {
  service: string;
  service_call?: { method: string; parameters: Record<string, string> };
  service_results?: Record<string, string>[];
}
interface Turn {
  speaker: "USER" | "SYSTEM";
  utterance: string;
  frames: Frame[];
}
interface Dialogue {
  dialogue_id: string;
  services: string[];
  turns: Turn[];
}

/** One tool per intent: `<Intent>`, or `<Service>_<Intent>` where two services of a dialogue share the name. */
export function intentTools(services: Service[]): {
  tools: Tool[];
  nameOf: (service: string, intent: string) => string;
} {
  const count = new Map<string, number>();
  for (const s of services) for (const it of s.intents) count.set(it.name, (count.get(it.name) ?? 0) + 1);
  const nameOf = (service: string, intent: string) =>
    (count.get(intent) ?? 0) > 1 ? `${service}_${intent}` : intent;
  const tools: Tool[] = [];
  for (const s of services) {
    const slots = new Map(s.slots.map((sl) => [sl.name, sl]));
    for (const it of s.intents) {
      const properties: Record<string, unknown> = {};
      const add = (name: string, dflt?: string) => {
        const sl = slots.get(name);
        const p: Record<string, unknown> = { type: "string", description: sl?.description ?? name };
        if (sl?.is_categorical && sl.possible_values.length) p.enum = sl.possible_values;
        if (dflt !== undefined && dflt !== "dontcare") p.default = dflt;
        properties[name] = p;
      };
      for (const r of it.required_slots) add(r);
      for (const [o, d] of Object.entries(it.optional_slots)) add(o, d);
      tools.push({
        type: "function",
        function: {
          name: nameOf(s.service_name, it.name),
          description: `${it.description} (${s.description})`,
          parameters: { type: "object", properties, required: [...it.required_slots] },
        },
      });
    }
  }
  return { tools, nameOf };
}

async function inputs(input: string): Promise<{ schemaFile: string; dialogueFiles: string[] }> {
  const st = await stat(input).catch(() => null);
  if (!st) throw new TunaError("CONVERT_INPUT", `no such file or directory "${input}"`);
  const dir = st.isDirectory() ? input : path.dirname(input);
  const files = (await readdir(dir)).sort();
  const schemaName = files.find((f) => /schema\.json$/.test(f));
  if (!schemaName) {
    throw new TunaError("CONVERT_SGD", `no *schema.json in ${dir}`, {
      hint: "SGD needs its schema file beside the dialogues",
    });
  }
  const dialogueFiles = st.isDirectory()
    ? files.filter((f) => f.endsWith(".json") && f !== schemaName).map((f) => path.join(dir, f))
    : [input];
  return { schemaFile: path.join(dir, schemaName), dialogueFiles };
}

export async function* convertSgd(input: string, report: ConvertReport): AsyncGenerator<OpenAIRecord> {
  const { schemaFile, dialogueFiles } = await inputs(input);
  const schema = JSON.parse(await readFile(schemaFile, "utf8")) as Service[];
  const byName = new Map(schema.map((s) => [s.service_name, s]));
  for (const file of dialogueFiles) {
    const dialogues = JSON.parse(await readFile(file, "utf8")) as Dialogue[];
    for (const [di, d] of dialogues.entries()) {
      const where = `${file}#${di + 1} (${d.dialogue_id})`;
      const services = d.services.map((n) => byName.get(n));
      if (services.some((s) => !s)) {
        skip(report, "unknown_service", `${where}: ${d.services.join(", ")}`);
        continue;
      }
      const { tools, nameOf } = intentTools(services as Service[]);
      const messages: OpenAIMessage[] = [];
      let callN = 0;
      for (const t of d.turns) {
        if (t.speaker === "USER") {
          messages.push({ role: "user", content: t.utterance });
          continue;
        }
        const calls = t.frames.filter((f) => f.service_call);
        if (calls.length) {
          const ids = calls.map(() => `call_${callN++}`);
          messages.push({
            role: "assistant",
            content: "",
            tool_calls: calls.map((f, k) => ({
              id: ids[k],
              type: "function" as const,
              function: {
                name: nameOf(f.service, (f.service_call as NonNullable<Frame["service_call"]>).method),
                arguments: JSON.stringify(f.service_call?.parameters ?? {}),
              },
            })),
          });
          calls.forEach((f, k) => {
            messages.push({
              role: "tool",
              tool_call_id: ids[k],
              name: nameOf(f.service, (f.service_call as NonNullable<Frame["service_call"]>).method),
              content: JSON.stringify(f.service_results ?? []),
            });
          });
        }
        messages.push({ role: "assistant", content: t.utterance });
      }
      // A dialogue that ends on the user has nothing to train on after it: drop the dangling user turns.
      let dropped = 0;
      while (messages.length && messages[messages.length - 1].role === "user") {
        messages.pop();
        dropped++;
      }
      if (dropped) skip(report, "trailing_user_turn_dropped", where);
      if (!messages.some((m) => m.role === "assistant")) {
        skip(report, "no_assistant_turn", where);
        continue;
      }
      yield { id: d.dialogue_id, messages, tools };
    }
  }
}
