// Runs hyperfs `core replay` scripts on JS hypercore@11 and prints the same JSON shape.
// Usage: node core-replay.js SCRIPTS.json  (a JSON array of scripts) -> a JSON array of results
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const Hypercore = require('hypercore')
const crypto = require('hypercore-crypto')
const c = require('compact-encoding')
const { manifest: manifestEnc } = require('hypercore/lib/messages')

async function replay (script) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hyperfs-js-replay-'))
  const keyPair = script.seed
    ? crypto.keyPair(Buffer.from(script.seed, 'hex'))
    : { secretKey: Buffer.from(script.secretKey, 'hex'), publicKey: Buffer.from(script.secretKey, 'hex').subarray(32) }
  const core = new Hypercore(dir, { keyPair, compat: !!script.compat })
  await core.ready()
  for (const op of script.ops) {
    if (op.append) await core.append(op.append.map(h => Buffer.from(h, 'hex')))
    else await core.truncate(op.truncate)
  }
  const state = core.core.state
  const out = {
    key: core.key.toString('hex'),
    discoveryKey: core.discoveryKey.toString('hex'),
    manifest: script.compat ? null : c.encode(manifestEnc, core.manifest).toString('hex'),
    length: core.length,
    byteLength: core.byteLength,
    fork: core.fork,
    treeHash: (await core.treeHash()).toString('hex'),
    signature: state.signature.toString('hex'),
    roots: state.roots.map(r => ({ index: r.index, size: r.size, hash: r.hash.toString('hex') }))
  }
  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
  return out
}

async function main () {
  const scripts = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  const results = []
  for (const s of scripts) results.push(await replay(s))
  process.stdout.write(JSON.stringify(results))
}

main().catch(err => { console.error(err); process.exit(1) })
