// Shared by the mqtt.js scenario scripts.
//
// Each script drives a broker with mqtt.js clients, then prints one JSON line on stdout
// describing what the clients observed; the Rust test that ran it asserts on that line. A
// wait that times out throws (exit status 1, message on stderr), which the Rust side reports.

import { parseArgs } from 'node:util'
import mqtt from 'mqtt'

// Every wait in a script is bounded by this many milliseconds.
export const WAIT = 5000

export function args (description) {
  const { values } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      protocol: { type: 'string' }
    }
  })
  if (!values.host || !values.port || !['311', '5'].includes(values.protocol)) {
    throw new Error(`usage: --host H --port P --protocol 311|5\n${description}`)
  }
  return { host: values.host, port: Number(values.port), v5: values.protocol === '5', protocol: values.protocol }
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
  // `options` are mqtt.js connect options added to the defaults below.
  constructor (a, clientId, options = {}) {
    this.messages = []
    this.waiters = []
    this.mqtt = mqtt.connect({
      host: a.host,
      port: a.port,
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
