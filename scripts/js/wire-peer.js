// A JS Hyperdrive peer on the JS stack's own wire (Noise, secret-stream, protomux over TCP), for
// the tests and the benchmark that put hyperfs beside it.
//
//   node wire-peer.js serve DIR SPEC.json   JS writes a drive (SPEC as drive-interop.js's:
//       {ops: [{put, file, executable?} | {symlink, target} | {del}]}), serves it on a TCP server
//       on 127.0.0.1 (each socket: store.replicate(false), the dialer is the Noise initiator)
//       and on a UDX socket (udx-native: a stream a peer starts on an id not seen before is
//       taken with that id both ways), and prints {key, port, udxPort, version, blobs}. Then one JSON command per stdin line, each
//       answered on a line: {put, file|text} → {version}; {truncate: version} → {version, fork};
//       {stats: true} → {blobsUploadedBlocks, blobsUploadedBytes, connections}.
//   node wire-peer.js read DIR ADDR KEY   JS dials ADDR, HOST:PORT over TCP or udx://HOST:PORT
//       over UDX on a random id used both ways (store.replicate(true), the Noise initiator), opens the drive KEY, downloads and reads every file and prints
//       {version, entries: [{path, executable, linkname, size, hash}]}. Then per stdin line
//       {wait: version}: waits until the drive reaches that version live, prints it again.
//   node wire-peer.js clone DIR ADDR KEY   downloads the whole drive (drive.download('/')) and
//       prints {seconds}: the benchmark's clone, over TCP or UDX.
// A stream that errors (the other side closed it for breaking a rule) is reported on stderr.
'use strict'
const fs = require('fs')
const net = require('net')
const readline = require('readline')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const crypto = require('hypercore-crypto')
const UDX = require('udx-native')
const NoiseSecretStream = require('@hyperswarm/secret-stream')

const { hex, say } = require('./lines')

// The byte stream (a TCP socket, a UDX stream) wrapped in a secret stream and handed to the
// store, as Hyperswarm does.
function pipe (store, socket, initiator) {
  const s = new NoiseSecretStream(initiator, socket)
  socket.on('error', (e) => process.stderr.write('socket: ' + e.message + '\n'))
  s.on('error', (e) => process.stderr.write('stream: ' + e.message + '\n'))
  store.replicate(s)
  return s
}

async function apply (drive, op) {
  if (op.put) {
    const data = op.file ? fs.readFileSync(op.file) : Buffer.from(op.text)
    await drive.put(op.put, data, { executable: !!op.executable })
  } else if (op.symlink) {
    await drive.symlink(op.symlink, op.target)
  } else if (op.del) {
    await drive.del(op.del)
  }
}

async function describe (drive) {
  const entries = []
  for await (const e of drive.list('/')) {
    const v = e.value
    const data = v.blob ? await drive.get(e.key) : Buffer.alloc(0)
    entries.push({ path: e.key, executable: v.executable, linkname: v.linkname, size: data.length, hash: hex(crypto.hash(data)) })
  }
  return { version: drive.version, entries }
}

async function serve (dir, spec) {
  const store = new Corestore(dir)
  const drive = new Hyperdrive(store)
  await drive.ready()
  for (const op of spec.ops) await apply(drive, op)
  const blobs = await drive.getBlobs()
  const stats = { blobsUploadedBlocks: 0, blobsUploadedBytes: 0, connections: 0 }
  blobs.core.on('upload', (index, bytes) => { stats.blobsUploadedBlocks++; stats.blobsUploadedBytes += bytes })
  const server = net.createServer((socket) => {
    stats.connections++
    pipe(store, socket, false)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const udx = new UDX()
  const socket = udx.createSocket()
  socket.bind(0, '127.0.0.1')
  const seen = new Set()
  // A UDX packet for an id no stream has: a peer starting a stream on that id.
  socket.on('message', (buf, from) => {
    if (buf.length < 20 || buf[0] !== 0xff || buf[1] !== 1) return
    const id = buf.readUInt32LE(4)
    const who = id + '@' + from.host + ':' + from.port
    if (seen.has(who)) return
    seen.add(who)
    stats.connections++
    const stream = udx.createStream(id)
    stream.connect(socket, id, from.port, from.host)
    pipe(store, stream, false)
  })
  say({ key: hex(drive.key), port: server.address().port, udxPort: socket.address().port, version: drive.version, blobs: hex(blobs.core.key) })
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const cmd = JSON.parse(line)
    if (cmd.truncate !== undefined) {
      await drive.truncate(cmd.truncate)
      say({ version: drive.version, fork: drive.core.fork })
    } else if (cmd.stats) {
      say(stats)
    } else {
      await apply(drive, cmd)
      say({ version: drive.version })
    }
  }
  server.close()
  await drive.close()
  await store.close()
}

async function dial (dir, addr, key) {
  const udxAddr = addr.startsWith('udx://') ? addr.slice(6) : null
  const [host, port] = (udxAddr || addr).split(':')
  const store = new Corestore(dir)
  let socket
  if (udxAddr) {
    const udx = new UDX()
    const sock = udx.createSocket()
    sock.bind(0, '127.0.0.1')
    const id = (Math.random() * 0x100000000) >>> 0
    socket = udx.createStream(id)
    socket.connect(sock, id, Number(port), host)
  } else {
    socket = net.connect(Number(port), host)
  }
  pipe(store, socket, true)
  const drive = new Hyperdrive(store, Buffer.from(key, 'hex'))
  await drive.ready()
  // The first version: wait until the peer's length arrived.
  while (drive.version === 0 || drive.core.length === 0) await nextVersion(drive)
  return { store, drive, socket }
}

// Asks for the peer's newest length and waits for an append, at most 100 ms. A timer, not only
// the update's promise: an update that settles at once made a loop of microtasks that never let
// the event loop read the socket.
async function nextVersion (drive) {
  let onappend, timer
  const appended = new Promise((resolve) => { onappend = resolve; drive.core.once('append', resolve) })
  drive.core.update({ wait: true }).catch(() => {})
  await Promise.race([appended, new Promise((resolve) => { timer = setTimeout(resolve, 100) })])
  clearTimeout(timer)
  drive.core.off('append', onappend)
}

async function read (dir, addr, key) {
  const { store, drive, socket } = await dial(dir, addr, key)
  say(await describe(drive))
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const cmd = JSON.parse(line)
    const start = Date.now()
    while (drive.version < cmd.wait) {
      if (Date.now() - start > 10000) throw new Error('version ' + cmd.wait + ' did not arrive')
      await nextVersion(drive)
    }
    say({ ...(await describe(drive)), ms: Date.now() - start })
  }
  socket.destroy()
  await drive.close()
  await store.close()
}

async function clone (dir, addr, key) {
  const start = process.hrtime.bigint()
  const { drive } = await dial(dir, addr, key)
  await drive.download('/').done()
  say({ seconds: Number(process.hrtime.bigint() - start) / 1e9 })
}

async function main () {
  const [mode, dir, a, b] = process.argv.slice(2)
  if (mode === 'serve') await serve(dir, JSON.parse(fs.readFileSync(a, 'utf8')))
  else if (mode === 'read') await read(dir, a, b)
  else if (mode === 'clone') await clone(dir, a, b)
  else throw new Error('mode: serve, read or clone')
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n')
  process.exit(1)
})
