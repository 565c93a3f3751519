// Decode Sparkplug B payloads with Eclipse Tahu's reference codec (npm sparkplug-payload),
// the second decoder of the Sparkplug tests (tests/agent/sparkplug_host.py tahu_decode).
// stdin: one payload per line, hex; stdout: one JSON line per payload, in order:
//   {"timestamp", "seq", "metrics": [{"name", "type", "value", "timestamp", "isHistorical",
//    "isTransient", "isNull", "properties": {key: {"type", "value"}}}]}
// or {"error": "..."} for a payload the codec refuses. 64-bit integers (protobufjs Long) are
// written as decimal strings so that no digit is lost in JSON; NaN and +-Infinity as the
// strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers).
// Usage: NODE_PATH=.node/node_modules node tests/agent/tahu_decode.js < payloads.hex
"use strict";

const readline = require("readline");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

function plain(value) {
  if (value === null || value === undefined) return value === undefined ? null : value;
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);  // NaN, Infinity
  if (typeof value === "object" && typeof value.toString === "function" &&
      value.constructor && value.constructor.name === "Long") {
    return value.toString();
  }
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
    return Buffer.from(value).toString("hex");
  }
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value)) out[key] = plain(value[key]);
    return out;
  }
  return value;
}

const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  const text = line.trim();
  let result;
  try {
    result = plain(sparkplug.decodePayload(Buffer.from(text, "hex")));
  } catch (err) {
    result = { error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(result) + "\n");
});
