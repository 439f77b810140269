// package.test.js: the package tidings-client is what it says: what package.json ships is what
// tidings.js imports, and tidings.d.ts declares exactly the names tidings.js exports.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import * as tidings from "../tidings.js";

const web = new URL("../", import.meta.url);
const read = (name) => readFile(new URL(name, web), "utf8");

/** Every module tidings.js loads, following relative imports and re-exports. */
async function importGraph(entry) {
  const seen = new Set();
  const pending = [entry];
  while (pending.length) {
    const name = pending.pop();
    if (seen.has(name)) continue;
    seen.add(name);
    const source = await read(name);
    for (const [, target] of source.matchAll(/^(?:import|export)\s[^;]*?from\s+"\.\/([^"]+)"/gms)) pending.push(target);
  }
  return seen;
}

test("package.json: an ES module named tidings-client whose entry and types are shipped", async () => {
  const pkg = JSON.parse(await read("package.json"));
  assert.equal(pkg.name, "tidings-client");
  assert.equal(pkg.type, "module");
  assert.deepEqual(pkg.exports["."], { types: "./tidings.d.ts", default: "./tidings.js" });
  assert.equal(pkg.types, "./tidings.d.ts");
  assert.deepEqual(pkg.dependencies ?? {}, {}, "the client has no runtime dependencies");
  const graph = await importGraph("tidings.js");
  assert.deepEqual([...pkg.files].sort(), [...graph, "tidings.d.ts"].sort(), "files = the modules tidings.js loads + types");
});

test("tidings.d.ts declares exactly the names tidings.js exports", async () => {
  const declarations = await read("tidings.d.ts");
  const declared = [...declarations.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(tidings).sort());
});
