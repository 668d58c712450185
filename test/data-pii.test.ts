import { describe, expect, it } from "vitest";
import {
  cnIdValid,
  ibanValid,
  luhnValid,
  redactConversation,
  redactText,
  zeroCounts,
} from "../src/data/pii.ts";

// Test-side generators, written independently of src/data/pii.ts.
function withLuhn(body: string): string {
  for (let d = 0; d <= 9; d++) {
    const s = body + d;
    let sum = 0;
    for (let i = 0; i < s.length; i++) {
      let x = Number(s[s.length - 1 - i]);
      if (i % 2 === 1) x = x * 2 > 9 ? x * 2 - 9 : x * 2;
      sum += x;
    }
    if (sum % 10 === 0) return s;
  }
  throw new Error("unreachable");
}
function cnId(first17: string): string {
  const w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  const s = [...first17].reduce((a, c, i) => a + Number(c) * w[i], 0);
  return first17 + "10X98765432"[s % 11];
}
const group4 = (d: string, sep = " ") => d.match(/.{1,4}/g)?.join(sep) ?? d;

const visa = withLuhn("411111111111111");
const mc = withLuhn("555555555555444");
const unionpay = withLuhn("622202100112345678"); // 19 digits
const amex = withLuhn("37828224631000");
const id1 = cnId("11010519491231002");
const id2 = cnId("44030619900307123");

const positives: [string, string][] = [
  [`My card is ${visa}, please check`, `My card is [CARD], please check`],
  [`卡号 ${group4(mc)} 被扣款两次`, `卡号 [CARD] 被扣款两次`],
  [`card: ${group4(visa, "-")}`, `card: [CARD]`],
  [`银联卡${unionpay}无法支付`, `银联卡[CARD]无法支付`],
  [`Amex ${amex.slice(0, 4)} ${amex.slice(4, 10)} ${amex.slice(10)} declined`, "Amex [CARD] declined"],
  ["我的手机号是13800138000，请回电", "我的手机号是[PHONE]，请回电"],
  ["call +86 138 0013 8000 now", "call [PHONE] now"],
  ["手机：+8613912345678", "手机：[PHONE]"],
  ["US line +1 415 555 2671.", "US line [PHONE]."],
  ["London: +44 20 7946 0958", "London: [PHONE]"],
  ["Berlin +49-30-1234567 ok", "Berlin [PHONE] ok"],
  ["mail zhang.san@example.com today", "mail [EMAIL] today"],
  ["邮箱a_b+tag@mail.co.uk。", "邮箱[EMAIL]。"],
  [`身份证号${id1}，姓名张三`, "身份证号[CN_ID]，姓名张三"],
  [`ID ${id2.slice(0, 17)}x`.replace(/x$/, id2[17].toLowerCase()), "ID [CN_ID]"],
  ["账号：1234 5678 9012 3456", "账号：[BANK_ACCOUNT]"],
  ["my account number is 000123456789", "my account number is [BANK_ACCOUNT]"],
  ["acct no. 98765432101", "acct no. [BANK_ACCOUNT]"],
  ["转到账户 6630 1234 5678 0012 3", "转到账户 [BANK_ACCOUNT]"],
  ["IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN [IBAN] please"],
  ["DE89370400440532013000", "[IBAN]"],
  ["FR14 2004 1010 0505 0001 3M02 606", "[IBAN]"],
];

const negatives: string[] = [
  "订单号：2023112812345678，请查询",
  `Order #${withLuhn("400012345678901")} shipped`,
  `order number ${visa} was refunded`, // a Luhn-valid 16-digit order number after "order"
  "交易流水号 13800138000 已退款",
  "timestamp 1732780800000",
  "at 2024-11-28 12:30:45 we charged",
  "时间 20241128153045 扣款",
  "amount ¥1,234,567.89",
  "I paid $4111.11 yesterday",
  "金额 15000000000 元",
  "refund of 13800138.00 USD",
  `bad luhn ${visa.slice(0, 15)}${(Number(visa[15]) + 1) % 10}`,
  "card 1234567890123456", // no issuer has prefix 1
  `mixed ${visa.slice(0, 4)}-${visa.slice(4, 8)} ${visa.slice(8, 12)}-${visa.slice(12)}`,
  `身份证 ${id1.slice(0, 17)}${id1[17] === "1" ? "2" : "1"}`, // wrong checksum
  "IBAN GB82 WEST 1234 5698 7654 33", // mod-97 fails
  "version 1.2.3, ip 192.168.1.1",
  "I waited 13 days and 800138000 ms", // digits split by words
  "my account balance is 12345678",
  "ticket 16601234567890",
  "phone +12", // too short for E.164
  "编号 110105194912310021X9",
  "case +44 20 7946 0958000000000", // too many digits
];

describe("PII redaction", () => {
  it.each(positives)("redacts %s", (input, expected) => {
    expect(redactText(input)).toBe(expected);
  });

  it.each(negatives)("leaves %s alone", (input) => {
    expect(redactText(input)).toBe(input);
  });

  it("counts by type and can be switched off per type", () => {
    const counts = zeroCounts();
    const conv = redactConversation(
      {
        source: "x:1",
        messages: [
          { role: "user", content: `card ${visa}, mail a@b.cn, phone 13912345678` },
          {
            role: "assistant",
            content: "",
            reasoning: `user gave ${visa}`,
            tool_calls: [{ name: "lookup", arguments: { card: visa, n: 3 } }],
          },
        ],
      },
      { types: { email: false } },
      counts,
    );
    expect(conv.messages[0].content).toBe("card [CARD], mail a@b.cn, phone [PHONE]");
    expect(conv.messages[1].reasoning).toBe("user gave [CARD]");
    expect(conv.messages[1].tool_calls?.[0].arguments).toEqual({ card: "[CARD]", n: 3 });
    expect(counts).toEqual({ email: 0, iban: 0, cn_id: 0, card: 3, phone: 1, bank_account: 0 });
  });

  it("checksums", () => {
    expect(luhnValid("4111111111111111")).toBe(true);
    expect(luhnValid("4111111111111112")).toBe(false);
    expect(cnIdValid("11010519491231002X")).toBe(true);
    expect(cnIdValid("110105194902301234")).toBe(false); // Feb 30th
    expect(ibanValid("GB82WEST12345698765432")).toBe(true);
    expect(ibanValid("GB82WEST1234569876543")).toBe(false);
  });
});
