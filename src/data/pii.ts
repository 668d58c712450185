// PII redaction for payment support, with typed placeholders and counts. Every detector pairs a pattern with
// a check (Luhn, ISO 7064, mod-97, a valid birth date, an issuer prefix, a keyword before it), because an
// order number, a timestamp or an amount must not become [CARD]: precision matters as much as recall.
import type { Conversation, Message } from "./conversation.ts";

export const PII_TYPES = ["email", "iban", "cn_id", "card", "phone", "bank_account"] as const;
export type PiiType = (typeof PII_TYPES)[number];

export const PLACEHOLDER: Record<PiiType, string> = {
  email: "[EMAIL]",
  iban: "[IBAN]",
  cn_id: "[CN_ID]",
  card: "[CARD]",
  phone: "[PHONE]",
  bank_account: "[BANK_ACCOUNT]",
};

export type PiiCounts = Record<PiiType, number>;
export const zeroCounts = (): PiiCounts => ({
  email: 0,
  iban: 0,
  cn_id: 0,
  card: 0,
  phone: 0,
  bank_account: 0,
});

export function luhnValid(digits: string): boolean {
  let sum = 0;
  let dbl = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (dbl) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    dbl = !dbl;
  }
  return sum % 10 === 0;
}

/** Issuer (IIN) prefixes and lengths of the card networks a payment desk meets. */
function cardIssuerValid(d: string): boolean {
  const n = d.length;
  const p2 = Number(d.slice(0, 2));
  const p3 = Number(d.slice(0, 3));
  const p4 = Number(d.slice(0, 4));
  const p6 = Number(d.slice(0, 6));
  if (d[0] === "4") return n === 13 || n === 16 || n === 19; // Visa
  if (p2 >= 51 && p2 <= 55) return n === 16; // Mastercard
  if (p4 >= 2221 && p4 <= 2720) return n === 16; // Mastercard 2-series
  if (p2 === 34 || p2 === 37) return n === 15; // Amex
  if (p2 === 62 || p2 === 81) return n >= 16 && n <= 19; // UnionPay
  if (p4 >= 3528 && p4 <= 3589) return n >= 16 && n <= 19; // JCB
  if ((p3 >= 300 && p3 <= 305) || p2 === 36 || p2 === 38 || p2 === 39) return n >= 14 && n <= 19; // Diners
  if (p4 === 6011 || p2 === 65 || (p3 >= 644 && p3 <= 649) || (p6 >= 622126 && p6 <= 622925))
    return n >= 16 && n <= 19; // Discover
  if (p2 === 50 || (p2 >= 56 && p2 <= 69)) return n >= 12 && n <= 19; // Maestro
  return false;
}

/** ISO 7064 MOD 11-2 check of a mainland China resident ID, plus a plausible region and birth date. */
export function cnIdValid(id: string): boolean {
  if (!/^[1-9]\d{16}[\dXx]$/.test(id)) return false;
  const w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  let s = 0;
  for (let i = 0; i < 17; i++) s += (id.charCodeAt(i) - 48) * w[i];
  const check = "10X98765432"[s % 11];
  if (id[17].toUpperCase() !== check) return false;
  const y = Number(id.slice(6, 10));
  const m = Number(id.slice(10, 12));
  const d = Number(id.slice(12, 14));
  if (y < 1900 || y > 2100 || m < 1 || m > 12 || d < 1) return false;
  return d <= new Date(Date.UTC(y, m, 0)).getUTCDate();
}

const IBAN_LENGTH: Record<string, number> = {
  AD: 24,
  AE: 23,
  AT: 20,
  AZ: 28,
  BA: 20,
  BE: 16,
  BG: 22,
  BH: 22,
  BR: 29,
  CH: 21,
  CR: 22,
  CY: 28,
  CZ: 24,
  DE: 22,
  DK: 18,
  DO: 28,
  EE: 20,
  ES: 24,
  FI: 18,
  FO: 18,
  FR: 27,
  GB: 22,
  GE: 22,
  GI: 23,
  GL: 18,
  GR: 27,
  GT: 28,
  HR: 21,
  HU: 28,
  IE: 22,
  IL: 23,
  IS: 26,
  IT: 27,
  JO: 30,
  KW: 30,
  KZ: 20,
  LB: 28,
  LI: 21,
  LT: 20,
  LU: 20,
  LV: 21,
  MC: 27,
  MD: 24,
  ME: 22,
  MK: 19,
  MR: 27,
  MT: 31,
  MU: 30,
  NL: 18,
  NO: 15,
  PK: 24,
  PL: 28,
  PS: 29,
  PT: 25,
  QA: 29,
  RO: 24,
  RS: 22,
  SA: 24,
  SE: 24,
  SI: 19,
  SK: 24,
  SM: 27,
  TN: 24,
  TR: 26,
  UA: 29,
  VG: 24,
  XK: 20,
};

/** IBAN: known country length and ISO 13616 mod-97 = 1. */
export function ibanValid(raw: string): boolean {
  const s = raw.replace(/[\s-]/g, "").toUpperCase();
  if (!/^[A-Z]{2}\d{2}[A-Z0-9]+$/.test(s)) return false;
  if (IBAN_LENGTH[s.slice(0, 2)] !== s.length) return false;
  const r = s.slice(4) + s.slice(0, 4);
  let rem = 0;
  for (const ch of r) {
    const v = ch >= "A" ? String(ch.charCodeAt(0) - 55) : ch;
    for (const c of v) rem = (rem * 10 + (c.charCodeAt(0) - 48)) % 97;
  }
  return rem === 1;
}

// Words that say the number after them is not a card/phone/account (it is an order, a reference, an amount).
const NOT_PII_BEFORE =
  /(order|订单|單號|单号|tracking|运单|快递|ref(erence)?|transaction|交易|流水|invoice|发票|ticket|工单|case|serial|序列|编号|id\s*[:：#]|no\.\s*$|amount|金额|total|合计|¥|\$|€|£|rmb|cny|usd|timestamp|时间戳)[^\n]{0,12}$/i;

function precededByNonPii(text: string, index: number): boolean {
  return NOT_PII_BEFORE.test(text.slice(Math.max(0, index - 24), index));
}

const EMAIL_RE = /[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/g;
const IBAN_RE = /(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?![A-Za-z0-9])/g;
const CN_ID_RE = /(?<![0-9A-Za-z])[1-9]\d{16}[\dXx](?![0-9A-Za-z])/g;
// 13–19 digits, optionally grouped by single spaces or dashes; not part of a longer number or a decimal.
const CARD_RE = /(?<![\d.,\-/:])\d(?:[ -]?\d){11,18}(?![\d]|[.,]\d|[-/:]\d)/g;
// Mainland mobile: optional +86 / 86, then 1[3-9] and 9 digits, optionally as 3-4-4.
const CN_MOBILE_RE = /(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?![\d]|[.,]\d)/g;
// International E.164 with +: country code and 7–14 more digits, optionally grouped.
const INTL_PHONE_RE = /(?<![\w+])\+[1-9]\d{0,3}(?:[ -]?\(?\d{1,4}\)?){2,6}(?![\d])/g;
// Bank account: a keyword, up to a few chars of glue, then 8–30 digits (spaces/dashes allowed).
const BANK_ACCOUNT_RE =
  /(account\s*(?:number|no\.?|#)?|acct\.?\s*(?:no\.?|#)?|a\/c|账号|帐号|账户|帐户|卡号|银行卡)(\s*(?:is|:|：|为|是|#)?\s*)(\d(?:[ -]?\d){7,29})(?![\d])/gi;

export interface RedactOptions {
  /** Which types to redact; all by default. */
  types?: Partial<Record<PiiType, boolean>>;
}

function enabled(opts: RedactOptions, t: PiiType): boolean {
  return opts.types?.[t] ?? true;
}

/** Redact one string; counts are added to `counts`. */
export function redactText(text: string, opts: RedactOptions = {}, counts: PiiCounts = zeroCounts()): string {
  let s = text;
  // Skipping what cannot match (speed only): an email needs "@"; every other pattern needs an ASCII digit, and
  // no replacement adds one (placeholders have none), so text without digits after the email step has none later.
  if (enabled(opts, "email") && s.includes("@")) {
    s = s.replace(EMAIL_RE, () => {
      counts.email++;
      return PLACEHOLDER.email;
    });
  }
  if (!/[0-9]/.test(s)) return s;
  if (enabled(opts, "iban")) {
    s = s.replace(IBAN_RE, (m) => {
      if (!ibanValid(m)) return m;
      counts.iban++;
      return PLACEHOLDER.iban;
    });
  }
  if (enabled(opts, "cn_id")) {
    s = s.replace(CN_ID_RE, (m) => {
      if (!cnIdValid(m)) return m;
      counts.cn_id++;
      return PLACEHOLDER.cn_id;
    });
  }
  if (enabled(opts, "card")) {
    s = s.replace(CARD_RE, (m, offset: number, whole: string) => {
      const d = m.replace(/[ -]/g, "");
      if (d.length < 13 || d.length > 19) return m;
      // Grouped numbers must be grouped like cards: 4-4-4-4(-3), 4-6-5 (Amex), 4-6-4 (Diners), one separator kind.
      if (/[ -]/.test(m)) {
        const groups = m.split(/[ -]/).map((g) => g.length);
        const seps = new Set(m.match(/[ -]/g));
        const ok =
          seps.size === 1 &&
          (groups.slice(0, -1).every((g) => g === 4) ||
            groups.join(",") === "4,6,5" ||
            groups.join(",") === "4,6,4");
        if (!ok) return m;
      }
      if (!cardIssuerValid(d) || !luhnValid(d)) return m;
      if (precededByNonPii(whole, offset)) return m;
      counts.card++;
      return PLACEHOLDER.card;
    });
  }
  if (enabled(opts, "phone")) {
    const phone = (m: string, offset: number, whole: string) => {
      if (precededByNonPii(whole, offset)) return m;
      counts.phone++;
      return PLACEHOLDER.phone;
    };
    s = s.replace(CN_MOBILE_RE, phone);
    s = s.replace(INTL_PHONE_RE, (m, offset: number, whole: string) => {
      const digits = m.replace(/\D/g, "");
      if (digits.length < 8 || digits.length > 15) return m;
      return phone(m, offset, whole);
    });
  }
  if (enabled(opts, "bank_account")) {
    s = s.replace(BANK_ACCOUNT_RE, (_m, kw: string, glue: string) => {
      counts.bank_account++;
      return `${kw}${glue}${PLACEHOLDER.bank_account}`;
    });
  }
  return s;
}

function redactValue(v: unknown, opts: RedactOptions, counts: PiiCounts): unknown {
  if (typeof v === "string") return redactText(v, opts, counts);
  if (Array.isArray(v)) return v.map((x) => redactValue(x, opts, counts));
  if (v && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = redactValue(x, opts, counts);
    return o;
  }
  return v;
}

/** Redact content, reasoning and string tool-call arguments of every message. Returns a new conversation. */
export function redactConversation(
  conv: Conversation,
  opts: RedactOptions = {},
  counts: PiiCounts = zeroCounts(),
): Conversation {
  const messages = conv.messages.map((m): Message => {
    const out: Message = { ...m, content: redactText(m.content, opts, counts) };
    if (m.reasoning !== undefined) out.reasoning = redactText(m.reasoning, opts, counts);
    if (m.tool_calls) {
      out.tool_calls = m.tool_calls.map((c) => ({
        ...c,
        arguments: redactValue(c.arguments, opts, counts) as Record<string, unknown>,
      }));
    }
    return out;
  });
  return { ...conv, messages };
}
