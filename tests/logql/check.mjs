// Parses LogQL queries with Grafana's own grammar (@grafana/lezer-logql, pinned in package.json).
// Reads a JSON array of queries on stdin; prints one JSON object per query and line:
// {"query", "ok", "errors": [{"from", "to"}]}. Exits 1 if any query has an error node.
// The lezer parser never throws: syntax problems are error nodes ("⚠", type.isError), some of
// them zero-width where a token was expected.
import { parser } from '@grafana/lezer-logql';
import { readFileSync } from 'node:fs';

const queries = JSON.parse(readFileSync(0, 'utf8'));
let failed = 0;
for (const query of queries) {
  const errors = [];
  parser.parse(query).iterate({
    enter(node) {
      if (node.type.isError) errors.push({ from: node.from, to: node.to });
    },
  });
  if (errors.length) failed++;
  console.log(JSON.stringify({ query, ok: errors.length === 0, errors }));
}
process.exit(failed ? 1 : 0);
