// An automerge-repo 2.5 peer for the Rust interop tests.
//
//   node interop.mjs URL DOC_URL list
//       find the document through the server; print {"interactions": [ids...]}
//   node interop.mjs URL DOC_URL add ID PATIENT
//       find it, add an interaction with that id, and wait until a second, fresh peer
//       receives it from the server; print {"interactions": [ids before adding...]}
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const [url, docUrl, mode, id, patient] = process.argv.slice(2)
const fail = msg => {
  console.error(`interop: ${msg}`)
  process.exit(1)
}
setTimeout(() => fail("timed out"), 20000)

const peer = () => new Repo({ network: [new WebSocketClientAdapter(url, 1000)] })

const findReady = async (repo) => {
  const handle = await repo.find(docUrl)
  const doc = handle.doc()
  if (!doc || !doc.interactions) fail("document has no interactions map")
  return handle
}

const repo = peer()
const handle = await findReady(repo)
const seen = Object.keys(handle.doc().interactions).sort()

if (mode === "add") {
  handle.change(d => {
    d.interactions[id] = {
      id,
      patient,
      staff: "rn-lee",
      program: "ccm",
      started_at: "2026-12-04T15:00:00-05:00",
      ended_at: "2026-12-04T15:09:30-05:00",
      interactive: true,
      activity: "phone_call",
      note: "logged from the JS client",
    }
  })
  // Confirm through a second peer that the server has it.
  const check = peer()
  const other = await check.find(docUrl)
  for (let i = 0; i < 100; i++) {
    if (other.doc()?.interactions?.[id]) break
    await new Promise(r => setTimeout(r, 100))
  }
  if (!other.doc()?.interactions?.[id]) fail("the server never relayed the new entry")
} else if (mode !== "list") {
  fail(`unknown mode ${mode}`)
}
console.log(JSON.stringify({ interactions: seen }))
process.exit(0)
