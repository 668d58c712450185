// `tuna` — one file per command in this folder; each exports `register(program)`.
import { Command } from "commander";
import { isTunaError } from "../errors.ts";
import { register as registerChat } from "./chat.ts";
import { register as registerData } from "./data.ts";
import { register as registerDemo } from "./demo.ts";
import { register as registerEval } from "./eval.ts";
import { register as registerMerge } from "./merge.ts";
import { register as registerModel } from "./model.ts";
import { register as registerSweep } from "./sweep.ts";
import { register as registerTemplate } from "./template.ts";
import { register as registerTokenize } from "./tokenize.ts";
import { register as registerTrain } from "./train.ts";

const program = new Command("tuna")
  .description("Fine-tune open models for customer-service assistants, with the model's own chat template.")
  .showHelpAfterError();

for (const register of [
  registerTrain,
  registerData,
  registerTokenize,
  registerTemplate,
  registerModel,
  registerMerge,
  registerEval,
  registerChat,
  registerSweep,
  registerDemo,
]) {
  register(program);
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (isTunaError(e)) {
    process.stderr.write(`error [${e.code}]: ${e.message}\n`);
    if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
    process.exit(2);
  }
  throw e;
}
