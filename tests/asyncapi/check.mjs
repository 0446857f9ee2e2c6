// The official AsyncAPI parser (@asyncapi/parser, what `asyncapi validate` runs) on AsyncAPI documents.
//   node check.mjs DOC.yaml [DOC.yaml...]   prints one JSON report per document, a list, on stdout
// A report: the parser's diagnostics; for each message, its payload's schemaFormat and whether the parser
// has a schema parser registered for it (an unregistered format is passed through unchecked, without a
// word, in AsyncAPI 3.0); and for each example next to the document (examples/*.json, examples/invalid/*.json)
// whether it is valid against its message's payload schema as the parser's model holds it, checked with
// the parser's own JSON Schema validator (Ajv, draft-07). Format keywords are annotations, as for the station.
import fs from 'node:fs';
import path from 'node:path';
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';
import Ajv from 'ajv';

const SEVERITY = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k.toLowerCase()]));

function examples(folder) {
  const out = [];
  for (const [dir, invalid] of [[folder, false], [path.join(folder, 'invalid'), true]]) {
    if (!fs.existsSync(dir)) continue;
    for (const name of fs.readdirSync(dir).filter((n) => n.endsWith('.json')).sort()) {
      const doc = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
      // a negative example names its schema by file and carries the payload; a valid one is the payload
      out.push(invalid ? { file: `invalid/${name}`, schema: doc.schema, payload: doc.payload }
                       : { file: name, schema: doc.schema, payload: doc });
    }
  }
  return out;
}

async function check(file) {
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, file).parse();
  const report = {
    document: file,
    parsed: document !== undefined,
    diagnostics: diagnostics.map((d) => ({ severity: SEVERITY[d.severity], code: String(d.code),
                                           message: d.message, path: d.path.join('/') })),
    messages: [],
    examples: [],
  };
  if (!document) return report;
  const byId = new Map();
  for (const message of document.allMessages()) {
    const payload = message.payload();
    const format = payload?.schemaFormat();
    const schema = payload?.json()?.schema;
    report.messages.push({ id: message.id(), schemaFormat: format ?? null,
                           registered: format !== undefined && parser.parserRegistry.has(format),
                           schemaId: schema?.$id ?? null });
    if (schema?.$id) byId.set(schema.$id, schema);
  }
  const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
  const base = 'https://reeproduce.eu/schemas/reedge/v1/';
  for (const ex of examples(path.join(path.dirname(file), 'examples'))) {
    const sid = ex.schema.startsWith('https://') ? ex.schema : base + ex.schema;
    const schema = byId.get(sid);
    if (!schema) {
      report.examples.push({ file: ex.file, schemaId: sid, valid: null, errorsAt: [], error: 'no message has this schema' });
      continue;
    }
    let validate;
    try {
      validate = ajv.getSchema(sid) ?? ajv.compile(schema);
    } catch (e) {   // e.g. a draft 2020-12 schema: Ajv's draft-07 mode does not know its meta-schema
      report.examples.push({ file: ex.file, schemaId: sid, valid: null, errorsAt: [], error: String(e.message) });
      continue;
    }
    const valid = validate(ex.payload);
    const errorsAt = [...new Set((validate.errors ?? []).map((e) => e.instancePath || '/'))].sort();
    report.examples.push({ file: ex.file, schemaId: sid, valid, errorsAt });
  }
  return report;
}

const reports = [];
for (const file of process.argv.slice(2)) reports.push(await check(path.resolve(file)));
process.stdout.write(JSON.stringify(reports, null, 1) + '\n');
