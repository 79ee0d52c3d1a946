// Publish/subscribe at QoS 0, 1 and 2 between two mqtt.js clients: payloads of several
// sizes must arrive intact, in order, at the QoS of the subscription; a QoS 2 message to a
// QoS 1 subscription arrives at QoS 1.
import { Client, args, emit, pattern, run, settle } from './common.mjs'

const SIZES = [0, 1, 300, 70000, 5]

run(async () => {
  const a = args('pubsub')
  const sub = new Client(a, `mqttjs-pubsub-sub-${a.protocol}`)
  await sub.connected()
  const granted = []
  for (const qos of [0, 1, 2]) granted.push(...await sub.subscribe(`interop/pubsub/q${qos}`, qos))
  granted.push(...await sub.subscribe('interop/pubsub/down', 1))
  await settle(sub)

  const pub = new Client(a, `mqttjs-pubsub-pub-${a.protocol}`)
  await pub.connected()
  for (const qos of [0, 1, 2]) {
    for (const [i, size] of SIZES.entries()) {
      await pub.publish(`interop/pubsub/q${qos}`, pattern(qos * 10 + i, size), { qos })
    }
  }
  await pub.publish('interop/pubsub/down', 'downgraded', { qos: 2 })

  const received = await sub.expect(3 * SIZES.length + 1)
  await pub.end()
  await sub.end()
  emit({ granted, sizes: SIZES, received })
})
