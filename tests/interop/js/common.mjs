// Shared by the mqtt.js scenario scripts.
//
// Each script drives a broker with mqtt.js clients, then prints one JSON line on stdout
// describing what the clients observed; the Rust test that ran it asserts on that line. A
// wait that times out throws (exit status 1, message on stderr), which the Rust side reports.
//
// Against a cluster (`--ports p1,p2,...`), each client a script creates connects to the next
// node in turn, so publisher and subscriber sit on different nodes. What a single broker
// guarantees at once spreads between nodes a moment later (subscription interest through
// NATS, retained messages through the bucket), so in cluster mode only, `settle` and
// `waitRetained` wait, bounded, until it has spread.

import { parseArgs } from 'node:util'
import mqtt from 'mqtt'

// Every wait in a script is bounded by this many milliseconds.
export const WAIT = 5000

// Topics of the cluster-mode probes; no scenario's filter matches them.
const PROBE = 'interop-probe'

export function args (description) {
  const { values } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      // A cluster's nodes, comma separated: clients connect to them in turn.
      ports: { type: 'string' },
      protocol: { type: 'string' }
    }
  })
  if (!values.host || !values.port === !values.ports || !['311', '5'].includes(values.protocol)) {
    throw new Error(`usage: --host H (--port P | --ports P1,P2,...) --protocol 311|5\n${description}`)
  }
  const ports = values.ports ? values.ports.split(',').map(Number) : null
  return { host: values.host, port: Number(values.port), ports, placed: 0, v5: values.protocol === '5', protocol: values.protocol }
}

// The port the next client connects to: the broker's, or the next node's in turn.
export function nextPort (a) {
  return a.ports ? a.ports[a.placed % a.ports.length] : a.port
}

// Prints the result line the Rust test parses, then ends the process (an mqtt.js client
// left half-closed must not keep it alive).
export function emit (result) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
}

// Runs the scenario; any failure is reported on stderr with exit status 1.
export function run (scenario) {
  scenario().catch((error) => {
    process.stderr.write(`${error.stack || error}\n`, () => process.exit(1))
  })
}

export function withTimeout (promise, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT} ms`)), WAIT)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// A deterministic payload the Rust side can rebuild: byte j is (seed * 31 + j) % 256.
export function pattern (seed, size) {
  const out = Buffer.alloc(size)
  for (let j = 0; j < size; j++) out[j] = (seed * 31 + j) % 256
  return out
}

// mqtt.js gives user properties as { key: value | [values] }; the tests compare a list of
// [key, value] pairs in order.
function userProperties (props) {
  const pairs = []
  for (const [key, value] of Object.entries(props)) {
    for (const v of Array.isArray(value) ? value : [value]) pairs.push([key, v])
  }
  return pairs
}

function propertiesJson (props) {
  const out = {}
  if (!props) return out
  if (props.userProperties) out.user_properties = userProperties(props.userProperties)
  if (props.responseTopic !== undefined) out.response_topic = props.responseTopic
  if (props.correlationData !== undefined) out.correlation_data = props.correlationData.toString('hex')
  if (props.contentType !== undefined) out.content_type = props.contentType
  if (props.payloadFormatIndicator !== undefined) out.payload_format_indicator = props.payloadFormatIndicator ? 1 : 0
  if (props.messageExpiryInterval !== undefined) out.message_expiry_interval = props.messageExpiryInterval
  if (props.subscriptionIdentifier !== undefined) {
    const ids = props.subscriptionIdentifier
    out.subscription_identifiers = (Array.isArray(ids) ? ids : [ids]).sort((a, b) => a - b)
  }
  if (props.topicAlias !== undefined) out.topic_alias = props.topicAlias
  return out
}

// An mqtt.js client with a queue of received messages.
export class Client {
  // `options` are mqtt.js connect options added to the defaults below. A given `port` (a
  // probe's) does not take a turn among the nodes.
  constructor (a, clientId, options = {}, port = null) {
    this.a = a
    this.clientId = clientId
    if (port === null) {
      port = nextPort(a)
      a.placed++
    }
    this.port = port
    this.messages = []
    this.waiters = []
    this.mqtt = mqtt.connect({
      host: a.host,
      port,
      protocolVersion: a.v5 ? 5 : 4,
      clientId,
      reconnectPeriod: 0,
      connectTimeout: WAIT,
      keepalive: 60,
      ...options
    })
    // Attached before CONNACK, so messages a resumed session sends at once are kept.
    this.mqtt.on('message', (topic, payload, packet) => {
      this.messages.push({
        topic,
        qos: packet.qos,
        retain: Boolean(packet.retain),
        payload: payload.toString('hex'),
        properties: propertiesJson(packet.properties)
      })
      this.waiters.splice(0).forEach((wake) => wake())
    })
    this.connack = withTimeout(new Promise((resolve, reject) => {
      this.mqtt.once('connect', (connack) => resolve({
        session_present: Boolean(connack.sessionPresent),
        reason_code: connack.reasonCode ?? connack.returnCode ?? 0
      }))
      this.mqtt.once('error', reject)
    }), 'CONNACK')
  }

  connected () {
    return this.connack
  }

  async subscribe (topic, qos, properties) {
    const granted = await withTimeout(
      this.mqtt.subscribeAsync(topic, properties ? { qos, properties } : { qos }), 'SUBACK')
    return granted.map((g) => g.qos)
  }

  unsubscribe (topic) {
    return withTimeout(this.mqtt.unsubscribeAsync(topic), 'UNSUBACK')
  }

  publish (topic, payload, options) {
    return withTimeout(this.mqtt.publishAsync(topic, payload, options), 'acknowledgement')
  }

  // Waits for `count` messages in all.
  async expect (count) {
    const deadline = Date.now() + WAIT
    while (this.messages.length < count) {
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`received ${this.messages.length} of ${count} messages: ${JSON.stringify(this.messages)}`)
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    return this.messages.splice(0, count)
  }

  // A normal DISCONNECT.
  end () {
    return withTimeout(this.mqtt.endAsync(), 'close after DISCONNECT')
  }

  // Drops the connection without DISCONNECT: the socket is reset.
  abort () {
    this.mqtt.options.reconnectPeriod = 0
    this.mqtt.stream.resetAndDestroy()
  }
}

// ---- cluster mode: waiting until what one node did has spread to the others ----

// True when a message with payload `token` reaches `client` within `within` ms.
async function arrives (client, token, within) {
  const hex = Buffer.from(token).toString('hex')
  const deadline = Date.now() + within
  for (;;) {
    const at = client.messages.findIndex((m) => m.payload === hex)
    client.messages.splice(0, at + 1)
    if (at >= 0) return true
    const left = deadline - Date.now()
    if (left <= 0) return false
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, left)
      client.waiters.push(() => { clearTimeout(timer); resolve() })
    })
  }
}

// Cluster mode: resolves once every other node routes to the subscriptions `client` made
// so far (`shared`: they are shared subscriptions, whose interest travels on a connection
// of its own). SUBACK comes before the other nodes know of a subscription. A node hands
// its subscriptions' interest to NATS in the order they were made, and NATS passes it on
// in order, so a probe subscription made on the same node afterwards, that a message from
// each other node reaches, shows the earlier ones are known there.
export async function settle (client, shared = false) {
  const a = client.a
  if (!a.ports) return
  const topic = `${PROBE}/${client.clientId}`
  const listener = new Client(a, `${PROBE}-${client.clientId}`, {}, client.port)
  await listener.connected()
  await listener.subscribe(shared ? `$share/${PROBE}/${topic}` : topic, 0)
  for (const port of a.ports) {
    if (port === client.port) continue
    const prober = new Client(a, `${PROBE}-${client.clientId}-${port}`, {}, port)
    await prober.connected()
    const token = String(port)
    const deadline = Date.now() + WAIT
    for (;;) {
      await prober.publish(topic, token, { qos: 0 })
      if (await arrives(listener, token, 50)) break
      if (Date.now() > deadline) {
        throw new Error(`${client.clientId}'s subscriptions not known on node ${port} within ${WAIT} ms`)
      }
    }
    await prober.end()
  }
  await listener.end()
}

// Cluster mode: resolves once the retained messages `publisher` published so far are
// visible on the node at `port`. A node writes its retained changes to the bucket one at a
// time, in order, and every node applies the bucket in order, so a marker retained last,
// seen there, shows the earlier changes are.
export async function waitRetained (publisher, port) {
  const a = publisher.a
  if (!a.ports) return
  const topic = `${PROBE}/retained/${publisher.clientId}`
  const token = `${process.hrtime.bigint()}`
  await publisher.publish(topic, token, { qos: 1, retain: true })
  const reader = new Client(a, `${PROBE}-${publisher.clientId}-reader`, {}, port)
  await reader.connected()
  const deadline = Date.now() + WAIT
  for (;;) {
    // A retained message in the node's mirror comes right after SUBACK.
    await reader.subscribe(topic, 0)
    const seen = await arrives(reader, token, 50)
    await reader.unsubscribe(topic)
    if (seen) break
    if (Date.now() > deadline) throw new Error(`retained marker not visible on node ${port} within ${WAIT} ms`)
  }
  await reader.end()
}

// Cluster mode: a client on `client`'s node subscribed to `filter` at QoS 1. The node
// routes a message to all its matching subscriptions at once, so what the watcher got,
// `client`'s (possibly offline) session got too. Null on a single broker.
export async function watcher (client, filter) {
  if (!client.a.ports) return null
  const watch = new Client(client.a, `${PROBE}-${client.clientId}-watcher`, {}, client.port)
  await watch.connected()
  await watch.subscribe(filter, 1)
  return watch
}
