// Validates an AsyncAPI document (stdin, YAML or JSON) with the official parser, @asyncapi/parser
// (schema + Spectral rules). Prints every diagnostic on stderr; exits 1 on any error, or on any
// warning with --strict. On success prints what the parser read: version, servers, channels.
// Installed by scripts/test (`npm ci` here); run by tests/asyncapi.rs.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const strict = process.argv.includes('--strict');
const text = readFileSync(0, 'utf8');
const { document, diagnostics } = await new Parser().parse(text);
const names = ['error', 'warning', 'info', 'hint'];
for (const d of diagnostics) {
  console.error(`${names[d.severity]} ${d.code} at ${d.path.join('.')}: ${d.message}`);
}
const bad = diagnostics.filter((d) => d.severity === 0 || (strict && d.severity === 1));
if (!document || bad.length > 0) {
  console.error(`asyncapi document rejected: ${bad.length} problem(s)`);
  process.exit(1);
}
console.log(JSON.stringify({
  version: document.version(),
  servers: document.servers().all().map((s) => `${s.protocol()}://${s.host()}`),
  channels: Object.fromEntries(document.channels().all().map((c) => [c.id(), c.address()])),
  messages: document.messages().all().length,
  operations: document.operations().all().length,
}));
