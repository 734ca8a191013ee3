// The automerge-repo reference sync server (as in automerge-repo-sync-server): a Repo with
// NodeFS storage and the WebSocket server adapter, never announcing documents.
// Usage: node reference-server.mjs PORT DATA_DIR — prints "listening on PORT" when ready.
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { WebSocketServer } from "ws"
import os from "node:os"

const [port, dir] = process.argv.slice(2)
const wss = new WebSocketServer({ port: Number(port), maxPayload: 64 * 1024 * 1024 })
new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(dir),
  peerId: `storage-server-${os.hostname()}`,
  sharePolicy: async () => false,
})
wss.on("listening", () => console.log(`listening on ${port}`))
process.on("SIGTERM", () => process.exit(0))
