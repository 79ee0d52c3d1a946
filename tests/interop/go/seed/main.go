// The Go example of seed 000_4e451f008431d936 (eclipse/paho.mqtt.golang), as published.
// The one change: the broker address comes from MQTT_BROKER (default the seed's own
// tcp://localhost:1883), so the interop test can point it at midge on a free port.
// crates/broker/tests/it/interop_go.rs builds and runs it, and reads what it prints.

package main

import (
    "encoding/json"
    "fmt"
    "os"
    "time"

    mqtt "github.com/eclipse/paho.mqtt.golang"
)

type SensorData struct {
    Value     float64 `json:"value"`
    Unit      string  `json:"unit"`
    Timestamp int64   `json:"timestamp"`
}

var messagePubHandler mqtt.MessageHandler = func(client mqtt.Client, msg mqtt.Message) {
    fmt.Printf("Topic: %s\n", msg.Topic())
    fmt.Printf("Payload: %s\n", msg.Payload())
}

var connectHandler mqtt.OnConnectHandler = func(client mqtt.Client) {
    fmt.Println("Подключено")

    // Подписка после подключения
    token := client.Subscribe("sensors/#", 1, nil)
    token.Wait()
    fmt.Println("Подписка на sensors/#")
}

var connectionLostHandler mqtt.ConnectionLostHandler = func(client mqtt.Client, err error) {
    fmt.Printf("Соединение потеряно: %v\n", err)
}

func main() {
    opts := mqtt.NewClientOptions()
    broker := os.Getenv("MQTT_BROKER")
    if broker == "" {
        broker = "tcp://localhost:1883"
    }
    opts.AddBroker(broker)
    opts.SetClientID("go-mqtt-client")
    opts.SetUsername("guest")
    opts.SetPassword("guest")
    opts.SetKeepAlive(60 * time.Second)
    opts.SetDefaultPublishHandler(messagePubHandler)
    opts.OnConnect = connectHandler
    opts.OnConnectionLost = connectionLostHandler

    // Last Will
    opts.SetWill("clients/go-client/status", "offline", 1, true)

    client := mqtt.NewClient(opts)
    if token := client.Connect(); token.Wait() && token.Error() != nil {
        panic(token.Error())
    }

    // Публикация
    go func() {
        for {
            data := SensorData{
                Value:     22.5,
                Unit:      "celsius",
                Timestamp: time.Now().Unix(),
            }
            payload, _ := json.Marshal(data)

            token := client.Publish("sensors/temperature/room1", 1, false, payload)
            token.Wait()
            fmt.Println("Опубликовано")

            time.Sleep(5 * time.Second)
        }
    }()

    // Держим программу запущенной
    select {}
}
