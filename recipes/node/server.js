// A Node http server that restarts under `handover run` without losing a
// request. See README.md for what each part is for.
'use strict'
const http = require('node:http')
const net = require('node:net')
const notify = require('sd-notify')

// 1. The listening socket comes from handover (LISTEN_FDS, fd 3): every
//    generation shares it. LISTEN_PID says the fds are meant for us.
function listenFd () {
  if (process.env.LISTEN_PID !== String(process.pid) || process.env.LISTEN_FDS !== '1') {
    console.error('expected 1 listening socket in LISTEN_FDS: run me with `handover run --bind ...` (or a systemd .socket unit)')
    process.exit(1)
  }
  delete process.env.LISTEN_PID
  delete process.env.LISTEN_FDS
  delete process.env.LISTEN_FDNAMES
  return 3
}

const GRACE_MS = 1000 * Number(process.env.DRAIN_GRACE ?? 2)
let draining = false

const server = http.createServer((req, res) => {
  // 2. Draining: once stopping, every response says "Connection: close",
  //    so keep-alive clients reconnect (to the new generation) instead of
  //    sending their next request into a connection about to close.
  if (draining) res.setHeader('Connection', 'close')
  res.end(`pid=${process.pid}\n`)
})

server.listen({ fd: listenFd() }, () => {
  // 3. Readiness: handover stops the old generation only after READY=1.
  notify.ready()
})

process.on('SIGTERM', () => {
  if (draining) return
  draining = true
  // 4. Stop accepting, keep the connections. http.Server#close() would also
  //    close idle keep-alive connections at once (a request already on its
  //    way on one would meet a reset): net.Server's close only stops
  //    accepting, and calls back once the last connection is gone.
  net.Server.prototype.close.call(server, () => process.exit(0))
  // 5. Grace: what is still open after it has been idle all along: close it
  //    (requests in progress finish, with "Connection: close").
  setTimeout(() => server.closeIdleConnections(), GRACE_MS).unref()
})
process.on('SIGINT', () => process.exit(0))
