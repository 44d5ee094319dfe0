// Drives across hyperfs and JS hyperdrive@13, carried as proofs both ways.
//
//   node drive-interop.js write DIR SPEC.json   JS writes a drive, prints it as cores of proofs
//   node drive-interop.js read DIR CORES.json   JS verifies cores of proofs, reads the drive
//
// SPEC = {primaryKey: hex, ops: [{put: path, file: localPath, executable?, metadata?} |
//         {symlink: path, target} | {del: path}]}
// CORES = {db: key hex, cores: [{key, manifest: hex, proofs: [proof]}]}; a proof is
//   {fork, block?: {index, value, nodes}, upgrade?: {start, length, nodes, additionalNodes,
//   signature}, manifest: bool} with nodes {index, size, hash} and bytes as hex.
// Both modes print the drive as read by JS: {db, blobs, entries: [{path, executable, linkname,
//   metadata, blockMap, size, hash (BLAKE2b-256 of the content)}], readdir: [...]}.
'use strict'
const fs = require('fs')
const path = require('path')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const crypto = require('hypercore-crypto')
const c = require('compact-encoding')
const { MerkleTree } = require('hypercore/lib/merkle-tree')
const { manifest: manifestEnc } = require('hypercore/lib/messages')

const hex = (b) => Buffer.from(b).toString('hex')
const unhex = (h) => Buffer.from(h, 'hex')
const nodesOut = (ns) => ns.map((n) => ({ index: n.index, size: n.size, hash: hex(n.hash) }))
const nodesIn = (ns) => ns.map((n) => ({ index: n.index, size: n.size, hash: unhex(n.hash) }))

async function proofOf (core, req) {
  const rx = core.core.state.storage.read()
  try {
    const pending = await MerkleTree.proof(core.core.state, rx, req)
    rx.tryFlush()
    return await pending.settle()
  } catch (err) {
    rx.destroy()
    throw err
  }
}

// Carries `writer` into `replica` (a fresh core with the same key) proof by proof, the way a
// replica that asks for every block in order would receive it; returns the proofs as JSON.
async function carry (writer, replica) {
  const out = []
  const up = await proofOf(writer, { upgrade: { start: 0, length: writer.length } })
  const upgrade = { fork: writer.fork, block: null, hash: null, seek: null, upgrade: up.upgrade, manifest: writer.manifest }
  if (!(await replica.core.verify(upgrade))) throw new Error('upgrade did not verify')
  out.push({ fork: writer.fork, upgrade: { ...up.upgrade, nodes: nodesOut(up.upgrade.nodes), additionalNodes: nodesOut(up.upgrade.additionalNodes), signature: hex(up.upgrade.signature) }, manifest: true })
  for (let i = 0; i < writer.length; i++) {
    const nodes = await MerkleTree.missingNodes(replica.core.state, 2 * i, replica.length)
    const p = await proofOf(writer, { block: { index: i, nodes } })
    p.block.value = await writer.get(i)
    if (!(await replica.core.verify({ fork: writer.fork, block: p.block, hash: null, seek: null, upgrade: null, manifest: null }))) {
      throw new Error('block ' + i + ' did not verify')
    }
    out.push({ fork: writer.fork, block: { index: i, value: hex(p.block.value), nodes: nodesOut(p.block.nodes) }, manifest: false })
  }
  return out
}

async function describe (drive) {
  const entries = []
  for await (const e of drive.list('/')) {
    const v = e.value
    let data = Buffer.alloc(0)
    if (v.blob) data = await drive.get(e.key)
    entries.push({
      path: e.key,
      executable: v.executable,
      linkname: v.linkname,
      metadata: v.metadata,
      blockMap: !!(v.blob && v.blob.blockMap),
      size: data ? data.length : 0,
      hash: hex(crypto.hash(data || Buffer.alloc(0)))
    })
  }
  const readdir = []
  for await (const name of drive.readdir('/')) readdir.push(name)
  return { db: hex(drive.key), blobs: hex(drive.blobs.core.key), entries, readdir }
}

async function write (dir, spec) {
  const store = new Corestore(path.join(dir, 'writer'), { primaryKey: unhex(spec.primaryKey), unsafe: true })
  const drive = new Hyperdrive(store)
  await drive.ready()
  for (const op of spec.ops) {
    if (op.put) await drive.put(op.put, fs.readFileSync(op.file), { executable: !!op.executable, metadata: op.metadata || null })
    else if (op.symlink) await drive.symlink(op.symlink, op.target)
    else if (op.del) await drive.del(op.del)
  }
  await drive.getBlobs()
  const replicas = new Corestore(path.join(dir, 'replica'))
  const cores = []
  for (const w of [drive.core, drive.blobs.core]) {
    const r = replicas.get({ key: w.key })
    await r.ready()
    cores.push({ key: hex(w.key), manifest: hex(c.encode(manifestEnc, w.manifest)), proofs: await carry(w, r) })
  }
  const out = { drive: await describe(drive), carried: { db: hex(drive.key), cores } }
  await replicas.close()
  await drive.close()
  await store.close()
  return out
}

async function read (dir, carried) {
  const store = new Corestore(path.join(dir, 'reader'))
  for (const core of carried.cores) {
    const r = store.get({ key: unhex(core.key) })
    await r.ready()
    for (const p of core.proofs) {
      const proof = {
        fork: p.fork,
        block: p.block ? { index: p.block.index, value: unhex(p.block.value), nodes: nodesIn(p.block.nodes) } : null,
        hash: null,
        seek: null,
        upgrade: p.upgrade
          ? { start: p.upgrade.start, length: p.upgrade.length, nodes: nodesIn(p.upgrade.nodes), additionalNodes: nodesIn(p.upgrade.additionalNodes), signature: unhex(p.upgrade.signature) }
          : null,
        manifest: p.manifest ? c.decode(manifestEnc, unhex(core.manifest)) : null
      }
      if (!(await r.core.verify(proof))) throw new Error('a proof of core ' + core.key + ' did not verify')
    }
    await r.close()
  }
  const drive = new Hyperdrive(store, unhex(carried.db))
  await drive.ready()
  await drive.getBlobs()
  const out = await describe(drive)
  await drive.close()
  await store.close()
  return out
}

async function main () {
  const [mode, dir, file] = process.argv.slice(2)
  const input = JSON.parse(fs.readFileSync(file, 'utf8'))
  const out = mode === 'write' ? await write(dir, input) : await read(dir, input)
  process.stdout.write(JSON.stringify(out))
}

main().catch((err) => { console.error(err); process.exit(1) })
