// The wire oracle: each message hyperfs encodes is decoded by hypercore@11's own lib/messages.js
// decoder and encoded again by its encoder.
// Usage: node wire-oracle.js FILE.json, FILE = [{"type": "request", "hex": "..."}, ...]
// -> [{"hex": "<JS re-encoding>", "decoded": <JS's reading, buffers as hex>}, ...]
'use strict'
const fs = require('fs')
const c = require('compact-encoding')
const { wire } = require('hypercore/lib/messages')

const plain = (v) => JSON.parse(JSON.stringify(v, (k, x) => (x && x.type === 'Buffer') ? Buffer.from(x.data).toString('hex') : (typeof x === 'bigint' ? x.toString() : x)))

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const out = input.map(({ type, hex }) => {
  const enc = wire[type]
  const state = c.state()
  const buf = Buffer.from(hex, 'hex')
  state.buffer = buf; state.start = 0; state.end = buf.length
  const decoded = enc.decode(state)
  if (state.start !== state.end) throw new Error(`${type}: ${state.end - state.start} trailing bytes`)
  return { hex: Buffer.from(c.encode(enc, decoded)).toString('hex'), decoded: plain(decoded) }
})
console.log(JSON.stringify(out))
