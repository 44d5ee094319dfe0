// What the peer scripts share: hex of bytes, a JSON answer per line, and a list of HOST:PORT.
'use strict'

exports.hex = (b) => Buffer.from(b).toString('hex')
exports.say = (o) => process.stdout.write(JSON.stringify(o) + '\n')
// "HOST:PORT,HOST:PORT" → [{host, port}]
exports.parse = (list) => list.split(',').map((a) => {
  const [host, port] = a.split(':')
  return { host, port: Number(port) }
})
