// Tablets played by the real automerge-repo 2.5.6 client, for rounds-bench's storm.
//
//   node js-tablets.mjs SPEC.json
//
// SPEC: {"url": "ws://…", "tablets": 10, "entries": 40,
//        "facilities": [{"token": "…", "patients": ["r-0000", …], "docs": ["automerge:…", …]}]}
// `docs[i]` is the current month's document of `patients[i]`, already on the server. Every tablet
// of a facility opens all of them, adds `entries` interactions to documents of its choosing,
// and waits until it sees every tablet's entries of its facility. Prints one JSON line:
// {"seconds": …, "open_seconds": …, "entries": …, "received": {type: count}} — the time from the
// first connection until every tablet has converged, the time until every tablet had opened its
// documents, and the messages the tablets received from the server by type.
import { readFileSync } from "node:fs"
import { randomUUID } from "node:crypto"
import { ImmutableString } from "@automerge/automerge"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"))
const fail = msg => {
  console.error(`js-tablets: ${msg}`)
  process.exit(1)
}
const progress = []
const limit = spec.timeout_seconds ?? 1200
setTimeout(
  () => fail(`timed out after ${limit} s; entries seen per tablet: ${JSON.stringify(progress.map(p => p()))}`),
  limit * 1000,
)

// Documents are opened a batch at a time, as an app opens what it shows: 100 tablets asking for
// 200 documents each at once keep one node process busy long enough that automerge-repo's 60 s
// request timeout declares some of them unavailable.
const batch = spec.open_batch ?? 20
async function openAll(repo, docs) {
  const out = []
  for (let i = 0; i < docs.length; i += batch) {
    out.push(...(await Promise.all(docs.slice(i, i + batch).map(d => repo.find(d)))))
  }
  return out
}

const count = handles =>
  handles.reduce((n, h) => n + Object.keys(h.doc()?.interactions ?? {}).length, 0)

// Messages the tablets received from the server, by type.
const received = {}
const start = performance.now()
let opened = 0
let openDone = 0

async function tablet(facility, k) {
  const sep = spec.url.includes("?") ? "&" : "?"
  const url = facility.token ? `${spec.url}${sep}token=${facility.token}` : spec.url
  const repo = new Repo({ network: [new WebSocketClientAdapter(url, 1000)] })
  repo.networkSubsystem.on("message", m => {
    received[m.type] = (received[m.type] ?? 0) + 1
  })
  const handles = await openAll(repo, facility.docs)
  opened += 1
  if (opened === spec.facilities.length * spec.tablets) openDone = performance.now()
  const before = facility.before
  let x = (k + 1) * 2654435761
  for (let e = 0; e < spec.entries; e++) {
    x = (x * 1103515245 + 12345) >>> 0
    const i = x % handles.length
    const id = randomUUID()
    const at = new Date(Date.UTC(2026, 11, 1, 14, 0, 0) + e * 60000)
    handles[i].change(d => {
      // The write policy takes scalar strings only: automerge 3 makes a plain JS string a
      // collaborative text object, so every string goes in as an ImmutableString.
      const str = v => new ImmutableString(v)
      d.interactions[id] = {
        id: str(id),
        patient: str(facility.patients[i]),
        staff: str("rn-lee"),
        program: str("ccm"),
        started_at: str(at.toISOString().replace(".000Z", "+00:00")),
        ended_at: str(new Date(at.getTime() + 5 * 60000).toISOString().replace(".000Z", "+00:00")),
        interactive: true,
        activity: str("phone_call"),
        note: str("bench (JS tablet)"),
      }
    })
  }
  const want = before + spec.tablets * spec.entries
  progress.push(() => `${count(handles)}/${want}`)
  while (count(handles) < want) await new Promise(r => setTimeout(r, 50))
  return repo
}

const counts = await (async () => {
  // Each facility's entries before the storm, as the first tablet sees them.
  for (const f of spec.facilities) {
    const sep = spec.url.includes("?") ? "&" : "?"
    const url = f.token ? `${spec.url}${sep}token=${f.token}` : spec.url
    const repo = new Repo({ network: [new WebSocketClientAdapter(url, 1000)] })
    const handles = await openAll(repo, f.docs)
    f.before = count(handles)
    repo.shutdown?.()
  }
})()
void counts

const t0 = performance.now()
opened = 0
const repos = await Promise.all(
  spec.facilities.flatMap(f => Array.from({ length: spec.tablets }, (_, k) => tablet(f, k))),
)
const seconds = (performance.now() - t0) / 1000
console.log(
  JSON.stringify({
    seconds,
    open_seconds: (openDone - t0) / 1000,
    entries: spec.facilities.length * spec.tablets * spec.entries,
    setup_seconds: (t0 - start) / 1000,
    received,
  }),
)
for (const r of repos) r.shutdown?.()
process.exit(0)
