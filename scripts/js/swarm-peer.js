// A JS Hyperswarm peer with a Hyperdrive, for the NAT topologies (network namespaces): the JS
// app hyperfs must reach, and be reached by, through HyperDHT.
//
//   node swarm-peer.js serve BOOTSTRAP DIR PATH TEXT   a Hyperdrive in DIR holding PATH = TEXT,
//                                                      joined on Hyperswarm under its discovery
//                                                      key (server): prints {key, publicKey} once
//                                                      announced, serves until killed
//   node swarm-peer.js read BOOTSTRAP DIR KEY PATH     joins drive KEY's discovery key (client)
//                                                      and reads PATH: prints {ok, text, ms,
//                                                      error?} (ms: from the join to the bytes;
//                                                      given up after 60 s)
//
// BOOTSTRAP: comma-separated HOST:PORT of the HyperDHT to use.
'use strict'
const Hyperswarm = require('hyperswarm')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const { hex, say, parse } = require('./lines')

async function main () {
  const [mode, bootstrap, dir, a, b] = process.argv.slice(2)
  const swarm = new Hyperswarm({ bootstrap: parse(bootstrap) })
  const store = new Corestore(dir)
  swarm.on('connection', (conn) => {
    conn.on('error', () => {})
    store.replicate(conn)
  })
  if (mode === 'serve') {
    const drive = new Hyperdrive(store)
    await drive.ready()
    await drive.put(a, Buffer.from(b))
    await swarm.join(drive.discoveryKey, { server: true, client: false }).flushed()
    say({ key: hex(drive.key), publicKey: hex(swarm.keyPair.publicKey) })
    await new Promise(() => {})
  } else if (mode === 'read') {
    const start = process.hrtime.bigint()
    const ms = () => Number(process.hrtime.bigint() - start) / 1e6
    const drive = new Hyperdrive(store, Buffer.from(a, 'hex'))
    await drive.ready()
    swarm.join(drive.discoveryKey, { server: false, client: true })
    const result = await Promise.race([
      (async () => {
        for (;;) {
          const bytes = await drive.get(b, { wait: true, timeout: 5000 }).catch(() => null)
          if (bytes) return { ok: true, text: bytes.toString(), ms: ms() }
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      })(),
      new Promise((resolve) => setTimeout(() => resolve({ ok: false, ms: ms(), error: 'nothing within 60 s' }), 60000))
    ])
    say(result)
    await swarm.destroy()
    process.exit(0)
  } else {
    throw new Error('mode: serve | read')
  }
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1) })
