// wire.js: the browser's view of the wire protocol v1 framing (DESIGN.md "Wire protocol v1").
//
// Pure: no I/O, no timers. Guarantees: splitFrame returns every JSON message of a text frame, in
// order, or throws (the caller drops the connection); TidingsError is the one error type the
// client rejects with.

export const SUBPROTOCOL = "tidings.json";

/** An error reply from the server ({code, message, temporary}), or a local failure (code 0). */
export class TidingsError extends Error {
  constructor(code, message, temporary = false) {
    super(message);
    this.name = "TidingsError";
    this.code = code;
    this.temporary = temporary;
  }
}

/** Every message of one text frame: the server may join several JSON objects with "\n". */
export function splitFrame(text) {
  const messages = [];
  for (const line of text.split("\n")) {
    if (line.trim()) messages.push(JSON.parse(line));
  }
  return messages;
}
