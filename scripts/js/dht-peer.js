// A HyperDHT network on loopback for the tests (hyperdht's own testnet), and a JS node on it.
//
//   node dht-peer.js testnet N   starts N nodes, prints {bootstrap: ["127.0.0.1:PORT"]}, then takes
//       one JSON command per stdin line, each answered on a line:
//       {announce: TOPIC} → a fresh key pair announced under TOPIC (hex) by a JS node: {publicKey}
//       {lookup: TOPIC}   → the public keys a JS node finds under TOPIC: {peers: [hex]}
'use strict'
const readline = require('readline')
const createTestnet = require('hyperdht/testnet')
const DHT = require('hyperdht')

const hex = (b) => Buffer.from(b).toString('hex')
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')

async function main () {
  const [mode, n] = process.argv.slice(2)
  if (mode !== 'testnet') throw new Error('mode: testnet')
  const testnet = await createTestnet(Number(n || 10), { host: '127.0.0.1' })
  say({ bootstrap: testnet.bootstrap.map((b) => b.host + ':' + b.port) })
  const node = testnet.createNode()
  await node.fullyBootstrapped()
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const cmd = JSON.parse(line)
    if (cmd.announce) {
      const keyPair = DHT.keyPair()
      await node.announce(Buffer.from(cmd.announce, 'hex'), keyPair).finished()
      say({ publicKey: hex(keyPair.publicKey) })
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
