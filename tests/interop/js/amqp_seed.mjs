// Seed 002, 5.2, with the seed's own library: amqplib (callback API, as the seed writes it)
// publishes to amq.topic with routing key hello.amqp; an mqtt.js subscriber of hello/amqp
// receives it. Then an amqplib publish/consume/ack round trip with publisher confirms.
// Prints one JSON line; crates/broker/tests/it/amqp.rs asserts on it.
//
// usage: node amqp_seed.mjs --host H --port MQTT_PORT --amqp-port AMQP_PORT

import { parseArgs } from 'node:util'
import { createRequire } from 'node:module'
import mqtt from 'mqtt'
import { WAIT, emit } from './common.mjs'

const require = createRequire(import.meta.url)
const amqp = require('amqplib/callback_api')
const amqpPromise = require('amqplib')

const { values } = parseArgs({
  options: { host: { type: 'string' }, port: { type: 'string' }, 'amqp-port': { type: 'string' } }
})
const host = values.host
const port = Number(values.port)
const amqpPort = Number(values['amqp-port'])

function within (promise, what) {
  return Promise.race([
    promise,
    new Promise((_resolve, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), WAIT))
  ])
}

const result = {}

// The MQTT side subscribes first.
const sub = mqtt.connect({ host, port, username: 'guest', password: 'guest', protocolVersion: 5, reconnectPeriod: 0 })
await within(new Promise((resolve, reject) => { sub.on('connect', resolve); sub.on('error', reject) }), 'mqtt connect')
await within(sub.subscribeAsync('hello/amqp', { qos: 1 }), 'subscribe')
const arrived = new Promise((resolve) => sub.on('message', (topic, payload, packet) => resolve({ topic, payload: payload.toString(), qos: packet.qos })))

// The seed's code, apart from host and port.
const connection = {}
await within(new Promise((resolve, reject) => {
  amqp.connect({ hostname: host, port: String(amqpPort), username: 'guest', password: 'guest' }, (err, conn) => {
    if (err !== null) {
      reject(err)
    } else {
      connection.conn = conn
      conn.createChannel(function (err, ch) {
        if (err !== null) {
          reject(err)
        } else {
          connection.ch = ch
          resolve()
        }
      })
    }
  })
}), 'amqplib connect')
connection.ch.publish('amq.topic', 'hello.amqp', Buffer.from('hello amqp'))
result.seed = await within(arrived, 'MQTT delivery of hello.amqp')
connection.conn.close()

// Round trip: confirm channel, server-named exclusive queue, consume with ack.
const conn = await within(amqpPromise.connect(`amqp://guest:guest@${host}:${amqpPort}/`), 'connect')
const ch = await conn.createConfirmChannel()
const q = await ch.assertQueue('', { exclusive: true })
result.server_named = q.queue.startsWith('amq.gen-')
await ch.bindQueue(q.queue, 'amq.topic', 'round.*')
const got = []
const consumed = new Promise((resolve) => {
  ch.consume(q.queue, (msg) => {
    got.push({ key: msg.fields.routingKey, body: msg.content.toString(), redelivered: msg.fields.redelivered })
    ch.ack(msg)
    if (got.length === 2) resolve()
  })
})
ch.publish('amq.topic', 'round.one', Buffer.from('1'), { persistent: true })
ch.publish('amq.topic', 'round.two', Buffer.from('2'))
await within(ch.waitForConfirms(), 'confirms')
result.confirmed = true
await within(consumed, 'consume')
result.round_trip = got
await conn.close()
sub.end(true)
emit(result)
