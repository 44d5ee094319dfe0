// JS import and export of a folder: localdrive → hyperdrive@13 → localdrive with mirror-drive,
// the peer figure of `scripts/bench mirror`.
// Usage: node bench-mirror.js SRC WORK -> {"import": {seconds, files, bytes, peakRssMiB}, "export": {seconds}}
// The drive's corestore lives in WORK/store; the export goes to WORK/out.
'use strict'
const fs = require('fs')
const path = require('path')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const Localdrive = require('localdrive')

const secs = (start) => Number(process.hrtime.bigint() - start) / 1e9

async function main () {
  const [src, work] = process.argv.slice(2)
  fs.rmSync(work, { recursive: true, force: true })
  const store = new Corestore(path.join(work, 'store'))
  const drive = new Hyperdrive(store)
  await drive.ready()
  let peak = 0
  const sample = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 50)
  let start = process.hrtime.bigint()
  const m = new Localdrive(src).mirror(drive)
  await m.done()
  const imported = { seconds: secs(start), files: m.count.add, bytes: m.bytesAdded }
  clearInterval(sample)
  imported.peakRssMiB = +(peak / 1048576).toFixed(1)
  start = process.hrtime.bigint()
  const e = drive.mirror(new Localdrive(path.join(work, 'out')))
  await e.done()
  const exported = { seconds: secs(start), files: e.count.add }
  await drive.close(); await store.close()
  console.log(JSON.stringify({ import: imported, export: exported }))
}

main().catch((e) => { console.error(e); process.exit(1) })
