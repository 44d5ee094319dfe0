// Proofs from JS hypercore@11 for random requests, to compare with hyperfs's proofs node by node.
// Usage: node proof-oracle.js CASES.json
//   CASES = [{seed, compat, ops (as core replay), requests: [{block?, hash?, seek?, upgrade?}]}]
//   -> [[{error: true} | {block: {index, nodes}, hash, seek: {bytes, nodes}, upgrade: {...}}]]
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const Hypercore = require('hypercore')
const crypto = require('hypercore-crypto')
const { MerkleTree } = require('hypercore/lib/merkle-tree')

const hexNodes = nodes => nodes.map(n => ({ index: n.index, size: n.size, hash: Buffer.from(n.hash).toString('hex') }))

async function proofs (c) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hyperfs-js-proof-'))
  const core = new Hypercore(dir, { keyPair: crypto.keyPair(Buffer.from(c.seed, 'hex')), compat: !!c.compat })
  await core.ready()
  for (const op of c.ops) {
    if (op.append) await core.append(op.append.map(h => Buffer.from(h, 'hex')))
    else await core.truncate(op.truncate)
  }
  const out = []
  for (const req of c.requests) {
    if (process.env.ORACLE_DEBUG) console.error('request', JSON.stringify(req))
    const rx = core.core.state.storage.read()
    try {
      const pending = await MerkleTree.proof(core.core.state, rx, {
        block: req.block || null, hash: req.hash || null, seek: req.seek || null, upgrade: req.upgrade || null
      })
      rx.tryFlush()
      const p = await pending.settle()
      out.push({
        block: p.block && { index: p.block.index, nodes: hexNodes(p.block.nodes) },
        hash: p.hash && { index: p.hash.index, nodes: hexNodes(p.hash.nodes) },
        seek: p.seek && { bytes: p.seek.bytes, nodes: hexNodes(p.seek.nodes) },
        upgrade: p.upgrade && {
          start: p.upgrade.start,
          length: p.upgrade.length,
          nodes: hexNodes(p.upgrade.nodes),
          additionalNodes: hexNodes(p.upgrade.additionalNodes),
          signature: Buffer.from(p.upgrade.signature).toString('hex')
        }
      })
    } catch (err) {
      rx.destroy() // an unflushed read batch would keep core.close() waiting forever
      out.push({ error: true, message: err.message })
    }
  }
  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
  return out
}

async function main () {
  const cases = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  const results = []
  for (const c of cases) results.push(await proofs(c))
  process.stdout.write(JSON.stringify(results))
}

main().catch(err => { console.error(err); process.exit(1) })
