// Persistent session: a subscriber (3.1.1 clean session 0, or v5 with a session expiry)
// disconnects; QoS 1 messages published meanwhile are queued and delivered in order when it
// returns with session present, without subscribing again; a QoS 0 message is not queued.
import { Client, args, emit, run, settle, watcher } from './common.mjs'

run(async () => {
  const a = args('persistent')
  const clientId = `mqttjs-persistent-${a.protocol}`
  // v3: clean session 0 on both connections. v5: clean start on the first, then resume.
  const session = a.v5 ? { properties: { sessionExpiryInterval: 300 } } : {}
  const sub = new Client(a, clientId, { clean: a.v5, ...session })
  const first = await sub.connected()
  await sub.subscribe('interop/persistent/#', 1)
  await settle(sub)
  // Cluster mode: shows when the session's node has queued what is published elsewhere.
  const watch = await watcher(sub, 'interop/persistent/#')
  await sub.end()

  const pub = new Client(a, `mqttjs-persistent-pub-${a.protocol}`)
  await pub.connected()
  await pub.publish('interop/persistent/t', 'one', { qos: 1 })
  // Queued by mistake, this would arrive between "one" and "two".
  await pub.publish('interop/persistent/t', 'qos0 while offline', { qos: 0 })
  await pub.publish('interop/persistent/t', 'two', { qos: 1 })
  await pub.publish('interop/persistent/t', 'three', { qos: 1 })
  await pub.end()
  if (watch) {
    await watch.expect(4)
    await watch.end()
  }

  // Cluster mode: on another node than the first time, so the session moves between nodes.
  const back = new Client(a, clientId, { clean: false, ...session })
  const second = await back.connected()
  const received = await back.expect(3)
  await back.end()
  emit({ first, second, received })
})
