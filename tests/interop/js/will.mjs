// Wills: a client whose connection is reset without DISCONNECT has its will published
// (with its v5 will properties); a client that sends a normal DISCONNECT does not.
import { Client, args, emit, run, settle } from './common.mjs'

run(async () => {
  const a = args('will')
  const sub = new Client(a, `mqttjs-will-sub-${a.protocol}`)
  await sub.connected()
  await sub.subscribe('interop/will/#', 1)
  await settle(sub)

  const polite = new Client(a, `mqttjs-will-polite-${a.protocol}`, {
    will: { topic: 'interop/will/polite', payload: Buffer.from('must not be sent'), qos: 1, retain: false }
  })
  await polite.connected()
  await polite.end()

  const will = { topic: 'interop/will/doomed', payload: Buffer.from('doomed is gone'), qos: 1, retain: false }
  if (a.v5) will.properties = { userProperties: { reason: 'reset' }, contentType: 'text/plain' }
  const doomed = new Client(a, `mqttjs-will-doomed-${a.protocol}`, { will })
  await doomed.connected()
  doomed.abort()

  const received = await sub.expect(1)
  // A will wrongly published for the polite client would have been routed before the
  // doomed client even connected; the short wait only covers delivery of such a message.
  await new Promise((resolve) => setTimeout(resolve, 200))
  received.push(...sub.messages.splice(0))
  await sub.end()
  emit({ received })
})
