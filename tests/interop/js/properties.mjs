// MQTT 5 only. A PUBLISH's properties reach the subscriber unchanged (user properties in
// order with repeats, response topic, correlation data, content type, payload format);
// overlapping subscriptions give one copy carrying both subscription identifiers; with a
// Topic Alias Maximum set by the subscriber, the broker's outgoing topic aliases resolve
// to the right topic in mqtt.js.
import { Client, args, emit, run, settle } from './common.mjs'

run(async () => {
  const a = args('properties')
  if (!a.v5) throw new Error('properties.mjs is MQTT 5 only')
  const sub = new Client(a, 'mqttjs-properties-sub', { properties: { topicAliasMaximum: 5 } })
  // Topic names as they were on the wire, before mqtt.js resolves aliases.
  const wireTopics = []
  sub.mqtt.on('packetreceive', (packet) => {
    if (packet.cmd === 'publish') wireTopics.push(String(packet.topic))
  })
  await sub.connected()
  await sub.subscribe('interop/props/#', 1, { subscriptionIdentifier: 7 })
  await sub.subscribe('interop/props/+/x', 0, { subscriptionIdentifier: 9 })
  await settle(sub)

  const pub = new Client(a, 'mqttjs-properties-pub')
  await pub.connected()
  await pub.publish('interop/props/a/x', '{"x": 1}', {
    qos: 1,
    properties: {
      userProperties: { k: ['v1', 'v2'], unicode: '\u00fc\u2713' },
      responseTopic: 'interop/reply',
      correlationData: Buffer.from([0x00, 0x01, 0x63, 0x6f, 0x72, 0x72, 0xff]),
      contentType: 'application/json',
      payloadFormatIndicator: true,
      messageExpiryInterval: 120
    }
  })
  // The same topic twice: the broker may send the second with its alias only.
  await pub.publish('interop/props/b/x', 'first', { qos: 1 })
  await pub.publish('interop/props/b/x', 'second', { qos: 1 })
  const routed = await sub.expect(3)
  await pub.end()
  await sub.end()
  emit({ routed, wire_topics: wireTopics })
})
