// JS replication of a drive between two processes over TCP (Noise-encrypted, as Hyperdrive
// peers do), the peer figure of `scripts/bench replicate`.
// Usage: node bench-replicate.js serve WORK FILE   -> prints {"key", "port"} once the drive holds
//                                                     FILE as /big.bin (a folder: its files under
//                                                     their paths), then serves until killed
//        node bench-replicate.js clone WORK KEY PORT -> {"seconds", "peakRssMiB"}: every block of
//                                                     the drive
//        node bench-replicate.js read WORK KEY PORT  -> {"seconds"}: /big.bin streamed, sparse
//        node bench-replicate.js randread WORK KEY PORT N -> {"p50Ms", "p99Ms", "maxMs"}: N reads
//                                                     of 4 KiB at random offsets of /big.bin
// HOST (default 127.0.0.1) is the address served on and dialed.
'use strict'
const fs = require('fs')
const net = require('net')
const path = require('path')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const secs = (start) => Number(process.hrtime.bigint() - start) / 1e9
const host = process.env.HOST || '127.0.0.1'

async function main () {
  const [mode, work, a, b, n] = process.argv.slice(2)
  if (mode === 'serve') {
    fs.rmSync(work, { recursive: true, force: true })
    const store = new Corestore(path.join(work, 'store'))
    const drive = new Hyperdrive(store)
    await drive.ready()
    if (fs.statSync(a).isDirectory()) {
      // Every file of the folder under its relative path, in one batch (one version).
      const batch = drive.batch()
      const walk = async (dir, rel) => {
        for (const name of fs.readdirSync(dir).sort()) {
          const full = path.join(dir, name)
          if (fs.statSync(full).isDirectory()) await walk(full, rel + '/' + name)
          else await batch.put(rel + '/' + name, fs.readFileSync(full))
        }
      }
      await walk(a, '')
      await batch.flush()
    } else {
      await new Promise((resolve, reject) => {
        fs.createReadStream(a).pipe(drive.createWriteStream('/big.bin')).on('finish', resolve).on('error', reject)
      })
    }
    const server = net.createServer((sock) => {
      const s = store.replicate(false)
      sock.pipe(s).pipe(sock)
      sock.on('error', () => {}); s.on('error', () => {})
    })
    server.listen(0, host, () => {
      console.log(JSON.stringify({ key: drive.key.toString('hex'), port: server.address().port }))
    })
    return
  }
  fs.rmSync(work, { recursive: true, force: true })
  const store = new Corestore(path.join(work, 'store'))
  const drive = new Hyperdrive(store, Buffer.from(a, 'hex'))
  await drive.ready()
  const start = process.hrtime.bigint()
  const sock = net.connect(+b, host)
  const s = store.replicate(true)
  sock.pipe(s).pipe(sock)
  const done = drive.findingPeers()
  sock.on('connect', done)
  await drive.update({ wait: true })
  if (mode === 'clone') {
    await drive.download('/').done()
  } else if (mode === 'randread') {
    // The same xorshift offsets as hyperfs-bench randread, each read timed alone.
    const size = (await drive.entry('/big.bin')).value.blob.byteLength
    const lat = []
    let stalled = 0
    let seed = 0x9e3779b97f4a7c15n
    const mask = (1n << 64n) - 1n
    // Stalled reads cost 10 s each: past this budget the reads stop and what came is reported
    // (the bench's own limit otherwise killed the script and left no JS figure at all).
    const budget = process.hrtime.bigint() + 480n * 1000000000n
    let done = 0
    for (let i = 0; i < +n && process.hrtime.bigint() < budget; i++, done++) {
      seed ^= (seed << 13n) & mask; seed ^= seed >> 7n; seed ^= (seed << 17n) & mask
      const at = Number(seed % BigInt(Math.floor(size / 4096))) * 4096
      const t = process.hrtime.bigint()
      const read = (async () => {
        let got = 0
        for await (const chunk of drive.createReadStream('/big.bin', { start: at, length: 4096 })) got += chunk.length
        if (got !== 4096) throw new Error('short read')
        return true
      })()
      // Some reads here never finish (seen from a few hundred on, loopback): each gets 10 s,
      // and those that do not finish are counted rather than waited for.
      let timer
      const finished = await Promise.race([read, new Promise((resolve) => { timer = setTimeout(resolve, 10000, false) })])
      clearTimeout(timer)
      if (finished) lat.push(secs(t) * 1e3)
      else stalled++
    }
    lat.sort((x, y) => x - y)
    const pct = (p) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))]
    console.log(JSON.stringify({ reads: done, stalled, p50Ms: pct(0.5), p99Ms: pct(0.99), maxMs: lat[lat.length - 1] }))
    process.exit(0) // without closing: streams of stalled reads would hold the close
  } else {
    const rs = drive.createReadStream('/big.bin')
    let n = 0
    for await (const chunk of rs) n += chunk.length
    if (n === 0) throw new Error('nothing read')
  }
  const seconds = secs(start)
  sock.destroy()
  await drive.close(); await store.close()
  // ru_maxrss is in KiB on Linux.
  console.log(JSON.stringify({ seconds, peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }))
}

main().catch((e) => { console.error(e); process.exit(1) })
