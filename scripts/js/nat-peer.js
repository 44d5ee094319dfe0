// JS HyperDHT peers for the NAT topologies (network namespaces: homes behind MASQUERADE
// routers, a "public" network with a DHT), the JS side of what hyperfs is measured beside.
//
//   node nat-peer.js testnet HOST N [BOOTSTRAP]
//                                          N DHT nodes bound to HOST (hyperdht's testnet), joining
//                                          the DHT of BOOTSTRAP when given: prints {bootstrap:
//                                          ["HOST:PORT", …]}, runs until killed
//   node nat-peer.js serve BOOTSTRAP       a HyperDHT server on a fresh key pair (BOOTSTRAP: comma-
//                                          separated HOST:PORT): prints {publicKey, firewalled,
//                                          host, port} once listening; each connection gets an echo
//   node nat-peer.js connect BOOTSTRAP KEY [RELAY]
//                                          connects to server KEY (through the blind relay of key
//                                          RELAY when given: hyperdht's relayThrough), writes a byte
//                                          and waits for its echo: prints {ok, ms, error?, remote?}
//                                          (ms: from the connect call to the echo; given up after
//                                          30 s)
//   node nat-peer.js relay BOOTSTRAP TOPIC a blind relay (JS's `blind-relay` on a HyperDHT server),
//                                          announced under TOPIC (hex): prints {publicKey}, relays
//                                          until killed
'use strict'
const createTestnet = require('hyperdht/testnet')
const DHT = require('hyperdht')
const RelayServer = require('blind-relay').Server

const { hex, say, parse } = require('./lines')

async function main () {
  const [mode, a, b, c] = process.argv.slice(2)
  if (mode === 'testnet') {
    const testnet = await createTestnet(Number(b || 5), c ? { host: a, bootstrap: parse(c) } : { host: a })
    say({ bootstrap: testnet.bootstrap.map((x) => x.host + ':' + x.port) })
    await new Promise(() => {})
  } else if (mode === 'serve') {
    const node = new DHT({ bootstrap: parse(a) })
    await node.fullyBootstrapped()
    const server = node.createServer((conn) => {
      conn.on('error', () => {})
      conn.on('data', (d) => conn.write(d))
    })
    const keyPair = DHT.keyPair()
    await server.listen(keyPair)
    const addr = server.address() || {}
    say({ publicKey: hex(keyPair.publicKey), firewalled: node.firewalled, host: addr.host, port: addr.port })
    await new Promise(() => {})
  } else if (mode === 'connect') {
    const node = new DHT({ bootstrap: parse(a) })
    await node.fullyBootstrapped()
    const start = process.hrtime.bigint()
    const ms = () => Number(process.hrtime.bigint() - start) / 1e6
    const result = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ ok: false, ms: ms(), error: 'no connection within 30 s' }), 30000)
      const conn = node.connect(Buffer.from(b, 'hex'), c ? { relayThrough: Buffer.from(c, 'hex') } : {})
      conn.on('error', (e) => { clearTimeout(timer); resolve({ ok: false, ms: ms(), error: e.code || e.message }) })
      conn.on('open', () => conn.write(Buffer.from([7])))
      conn.on('data', () => {
        clearTimeout(timer)
        const remote = conn.rawStream && conn.rawStream.remoteHost
        resolve({ ok: true, ms: ms(), remote: remote ? remote + ':' + conn.rawStream.remotePort : null })
      })
    })
    say(result)
    await node.destroy()
    process.exit(0)
  } else if (mode === 'relay') {
    // A relay runs where everyone reaches it, and says so (as an operator would configure it):
    // peers then connect to it directly instead of punching.
    const node = new DHT({ bootstrap: parse(a), firewalled: false })
    await node.fullyBootstrapped()
    const relay = new RelayServer({ createStream: (opts) => node.createRawStream({ ...opts, framed: true }) })
    const server = node.createServer((conn) => {
      conn.on('error', () => {})
      relay.accept(conn, { id: conn.remotePublicKey }).on('error', () => {})
    })
    const keyPair = DHT.keyPair()
    await server.listen(keyPair)
    await node.announce(Buffer.from(b, 'hex'), keyPair, server.relayAddresses).finished()
    say({ publicKey: hex(keyPair.publicKey) })
    await new Promise(() => {})
  } else {
    throw new Error('mode: testnet | serve | connect | relay')
  }
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1) })
