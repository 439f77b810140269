// Small DOM helpers. Text from users only ever goes in through textContent, never as HTML.

/**
 * Create an element: el("li", {className, text, attrs, dataset, on}, ...children).
 * `text` sets textContent; children are nodes or strings (added as text nodes).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  if (props.className) node.className = props.className;
  if (props.text !== undefined && props.text !== null) node.textContent = String(props.text);
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const [name, value] of Object.entries(props.dataset ?? {})) node.dataset[name] = String(value);
  for (const [name, handler] of Object.entries(props.on ?? {})) node.addEventListener(name, handler);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** Remove every child of `node`. */
export function clear(node) {
  node.replaceChildren();
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A <time> element for a millisecond timestamp: short time shown, full date in the tooltip. */
export function timeElement(ts) {
  // Milliseconds, as in publications; seconds and ISO strings are accepted too.
  let date = new Date(typeof ts === "number" ? (ts < 1e11 ? ts * 1000 : ts) : typeof ts === "string" ? ts : Date.now());
  if (Number.isNaN(date.getTime())) date = new Date();
  return el("time", { text: timeFormat.format(date), attrs: { datetime: date.toISOString(), title: dateTimeFormat.format(date) } });
}

/** A badge count as shown: "" for none, "99+" beyond 99. */
export function badgeText(count) {
  if (!count) return "";
  return count > 99 ? "99+" : String(count);
}
