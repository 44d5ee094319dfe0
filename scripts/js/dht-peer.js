// A HyperDHT network on loopback for the tests (hyperdht's own testnet), and a JS node on it.
//
//   node dht-peer.js testnet N   starts N nodes, prints {bootstrap: ["127.0.0.1:PORT"]}, then takes
//       one JSON command per stdin line, each answered on a line:
//       {announce: TOPIC} → a fresh key pair announced under TOPIC (hex) by a JS node: {publicKey}
//       {lookup: TOPIC}   → the public keys a JS node finds under TOPIC: {peers: [hex]}
//       {serve: {PATH: TEXT, …}, dir: DIR, swarm?} → a Hyperdrive in DIR with those files,
//                           served by a HyperDHT server (each connection: store.replicate
//                           (connection)), with `swarm` also announced under the drive's
//                           discovery key as Hyperswarm does:
//                           {publicKey (the server's), key (the drive's), version}
//       {put: PATH, text: TEXT} → written to that drive: {version}
//       {connect: PUBLICKEY, core: KEY, dir: DIR, length: N} → a JS node connects to that
//                           HyperDHT server, replicates (store.replicate(connection)) and reads
//                           blocks 0..N of core KEY: {blocks: [utf-8 text], ms}
'use strict'
const readline = require('readline')
const createTestnet = require('hyperdht/testnet')
const DHT = require('hyperdht')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const { hex, say } = require('./lines')

async function main () {
  const [mode, n] = process.argv.slice(2)
  if (mode !== 'testnet') throw new Error('mode: testnet')
  const testnet = await createTestnet(Number(n || 10), { host: '127.0.0.1' })
  say({ bootstrap: testnet.bootstrap.map((b) => b.host + ':' + b.port) })
  const node = testnet.createNode()
  await node.fullyBootstrapped()
  let drive = null
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const cmd = JSON.parse(line)
    if (cmd.announce) {
      const keyPair = DHT.keyPair()
      await node.announce(Buffer.from(cmd.announce, 'hex'), keyPair).finished()
      say({ publicKey: hex(keyPair.publicKey) })
    } else if (cmd.serve) {
      const store = new Corestore(cmd.dir)
      drive = new Hyperdrive(store)
      await drive.ready()
      for (const [path, text] of Object.entries(cmd.serve)) await drive.put(path, Buffer.from(text))
      const server = node.createServer((conn) => {
        conn.on('error', (e) => process.stderr.write('connection: ' + e.message + '\n'))
        store.replicate(conn)
      })
      const keyPair = DHT.keyPair()
      await server.listen(keyPair)
      // As Hyperswarm serves a drive: announced under its discovery key, with the relays.
      if (cmd.swarm) await node.announce(drive.discoveryKey, keyPair, server.relayAddresses).finished()
      say({ publicKey: hex(keyPair.publicKey), key: hex(drive.key), version: drive.version })
    } else if (cmd.put) {
      await drive.put(cmd.put, Buffer.from(cmd.text))
      say({ version: drive.version })
    } else if (cmd.connect) {
      const start = Date.now()
      const store = new Corestore(cmd.dir)
      const conn = node.connect(Buffer.from(cmd.connect, 'hex'))
      conn.on('error', (e) => process.stderr.write('connection: ' + e.message + '\n'))
      store.replicate(conn)
      const core = store.get({ key: Buffer.from(cmd.core, 'hex') })
      await core.ready()
      while (core.length < cmd.length) await core.update({ wait: true })
      const blocks = []
      for (let i = 0; i < cmd.length; i++) blocks.push((await core.get(i)).toString())
      say({ blocks, ms: Date.now() - start })
    } else if (cmd.lookup) {
      const peers = new Set()
      for await (const r of node.lookup(Buffer.from(cmd.lookup, 'hex'))) {
        for (const p of r.peers) peers.add(hex(p.publicKey))
      }
      say({ peers: [...peers] })
    }
  }
  await testnet.destroy()
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n')
  process.exit(1)
})
