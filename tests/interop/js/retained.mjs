// Retained messages: a new subscriber gets the retained messages (retain flag set, QoS of
// the stored message), not the one deleted by an empty retained payload; a message
// published while it is subscribed arrives without the retain flag.
import { Client, args, emit, nextPort, run, settle, waitRetained } from './common.mjs'

run(async () => {
  const a = args('retained')
  const pub = new Client(a, `mqttjs-retained-pub-${a.protocol}`)
  await pub.connected()
  await pub.publish('interop/retained/a', 'A', { qos: 1, retain: true })
  await pub.publish('interop/retained/b', 'B', { qos: 0, retain: true })
  await pub.publish('interop/retained/gone', 'soon deleted', { qos: 1, retain: true })
  await pub.publish('interop/retained/gone', '', { qos: 1, retain: true })

  await waitRetained(pub, nextPort(a))
  const sub = new Client(a, `mqttjs-retained-sub-${a.protocol}`)
  await sub.connected()
  await sub.subscribe('interop/retained/#', 1)
  // The two stored messages come right after SUBACK; a deleted one would come before the
  // live message below, so taking three messages shows it did not come.
  const atSubscribe = await sub.expect(2)
  await settle(sub)
  await pub.publish('interop/retained/a', 'live', { qos: 1, retain: true })
  const live = await sub.expect(1)
  await pub.end()
  await sub.end()
  emit({ at_subscribe: atSubscribe, live })
})
