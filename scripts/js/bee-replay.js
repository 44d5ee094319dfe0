// Runs hyperfs `bee replay` scripts on JS hyperbee@2 and prints the same JSON shape.
// Usage: node bee-replay.js SCRIPTS.json  (a JSON array of scripts) -> a JSON array of results
// A script: {seed, ops: [{put: [k, v]} | {del: k} | {batch: [put/del ops]}], queries?: [...]}
// with hex keys and values; queries (get, range, history, diff; optional version and sub) are
// answered on the finished bee and returned as "answers".
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const Hypercore = require('hypercore')
const Hyperbee = require('hyperbee')
const crypto = require('hypercore-crypto')

const hex = (b) => (b === null || b === undefined ? null : Buffer.from(b).toString('hex'))
const buf = (h) => Buffer.from(h, 'hex')
const entry = (e) => (e ? { seq: e.seq, key: hex(e.key), value: hex(e.value) } : null)

async function collect (stream, map) {
  const out = []
  for await (const e of stream) out.push(map(e))
  return out
}

function keyRange (q) {
  const r = {}
  for (const k of ['gt', 'gte', 'lt', 'lte']) if (q[k] !== undefined) r[k] = buf(q[k])
  if (q.reverse) r.reverse = true
  if (q.limit !== undefined) r.limit = q.limit
  return r
}

async function answer (db, q) {
  // Sub-databases share their parent's session: only checkouts are closed afterwards.
  const checkout = q.version !== undefined ? db.checkout(q.version) : null
  let view = checkout || db
  if (q.sub !== undefined) view = view.sub(buf(q.sub))
  try {
    // JS `get` can return a key's old value after a batch deletes it (its "this block is the
    // key's" shortcut fires on a node the delete moved but did not rewrite); hyperfs answers
    // correctly, so the oracle looks the key up with a one-key range, JS's own tree walk.
    if (q.get !== undefined) {
      const k = buf(q.get)
      const found = await collect(view.createReadStream({ gte: k, lte: k, limit: 1 }), entry)
      return found.length ? found[0] : null
    }
    if (q.range !== undefined) return await collect(view.createReadStream(keyRange(q.range)), entry)
    if (q.history !== undefined) {
      const h = q.history
      const opts = {}
      for (const k of ['gt', 'gte', 'lt', 'lte', 'limit']) if (h[k] !== undefined) opts[k] = h[k]
      if (h.reverse) opts.reverse = true
      return await collect(view.createHistoryStream(opts), (e) => ({ type: e.type, seq: e.seq, key: hex(e.key), value: hex(e.value) }))
    }
    if (q.diff !== undefined) {
      const d = q.diff
      const left = d.left !== undefined ? view.checkout(d.left) : view
      try {
        return await collect(left.createDiffStream(d.right, keyRange(d)), (e) => ({ left: entry(e.left), right: entry(e.right) }))
      } finally {
        if (left !== view) await left.close()
      }
    }
    throw new Error('unknown query ' + JSON.stringify(q))
  } finally {
    if (checkout) await checkout.close()
  }
}

async function replay (script) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hyperfs-js-bee-'))
  const keyPair = crypto.keyPair(buf(script.seed))
  const core = new Hypercore(dir, { keyPair })
  const db = new Hyperbee(core)
  await db.ready()
  for (const op of script.ops) {
    if (op.put) await db.put(buf(op.put[0]), buf(op.put[1]))
    else if (op.del !== undefined) await db.del(buf(op.del))
    else {
      const b = db.batch()
      for (const o of op.batch) {
        if (o.put) await b.put(buf(o.put[0]), buf(o.put[1]))
        else await b.del(buf(o.del))
      }
      await b.flush()
    }
  }
  const blocks = []
  for (let i = 0; i < core.length; i++) blocks.push(hex(await core.get(i)))
  const out = { key: hex(core.key), blocks }
  if (script.queries) {
    out.answers = []
    for (const q of script.queries) out.answers.push(await answer(db, q))
  }
  await db.close()
  fs.rmSync(dir, { recursive: true, force: true })
  return out
}

async function main () {
  const scripts = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  const results = []
  for (const s of scripts) results.push(await replay(s))
  process.stdout.write(JSON.stringify(results))
}

main().catch((err) => { console.error(err); process.exit(1) })
