// Public API of the data room: readers, adapters, validation, cleaning, mixing, and prepareConversations.

export { Deduplicator, detectLanguage, filterReason } from "./clean.ts";
export { DataConfig, type DataConfigInput, SourceConfig, SplitConfig } from "./config.ts";
export { Conversation, Message, PlainText, PreferencePair, Tool, ToolCall } from "./conversation.ts";
export { adaptRecord, detectFormat, FORMATS, type Format, splitThink } from "./formats.ts";
export { mixSources, Rng, splitItems } from "./mix.ts";
export { PII_TYPES, redactConversation, redactText } from "./pii.ts";
export { type Prepared, parseDataConfig, prepareConversations } from "./prepare.ts";
export { expandPaths, type RawItem, readAll, readFile } from "./readers.ts";
export { DataReport, type Issue } from "./report.ts";
export { checkConversation, processRecord, validateFiles, validRecords } from "./validate.ts";
