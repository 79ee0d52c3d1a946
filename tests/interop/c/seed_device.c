/*
 * The seed's device scenario (seed 000_4e451f008431d936) written against the Eclipse Paho C
 * synchronous client (libpaho-mqtt3c), as an embedded device would use it: connect with a
 * retained QoS 1 will on clients/c-client/status, subscribe to sensors/# at QoS 1, publish a
 * reading at QoS 1 and receive it back, and receive one reading from another client.
 *
 * Usage: seed_device HOST PORT 311|5
 *
 * Prints one JSON object per line as things happen (crates/broker/tests/it/interop_pahoc.rs
 * reads them as they come and asserts on them):
 *   {"connected":{"version":V,"reason_code":RC,"session_present":B}}
 *   {"subscribed":{"granted":Q}}      the test publishes sensors/humidity/room1 after this
 *   {"published":{"topic":T,"payload":HEX}}   after PUBACK
 *   {"received":{"topic":T,"qos":Q,"retain":B,"payload":HEX}}   once per message
 *   {"done":true}   both messages received
 * and then stays connected, without DISCONNECT, until it is killed: its death is the
 * abnormal disconnect that must publish the will. Any failure prints {"error":...} to
 * stdout and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <MQTTClient.h>

/* Every wait is bounded; the test's own limit is shorter than the sum of these. */
#define WAIT_MS 5000L
#define OWN_TOPIC "sensors/temperature/room1"
#define OTHER_TOPIC "sensors/humidity/room1"

static void fail(const char *what, int rc)
{
    printf("{\"error\":\"%s\",\"rc\":%d}\n", what, rc);
    exit(1);
}

static void print_string(const char *s, size_t len)
{
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_hex(const void *bytes, size_t len)
{
    const unsigned char *b = bytes;
    putchar('"');
    for (size_t i = 0; i < len; i++)
        printf("%02x", b[i]);
    putchar('"');
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[3], "311") != 0 && strcmp(argv[3], "5") != 0)) {
        fprintf(stderr, "usage: %s HOST PORT 311|5\n", argv[0]);
        return 2;
    }
    int v5 = strcmp(argv[3], "5") == 0;
    /* Lines must reach the test as they are printed, not when the pipe buffer fills. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    char uri[300];
    snprintf(uri, sizeof uri, "tcp://%s:%s", argv[1], argv[2]);

    MQTTClient client;
    MQTTClient_createOptions create_opts = MQTTClient_createOptions_initializer;
    create_opts.MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    int rc = MQTTClient_createWithOptions(&client, uri, "c-mqtt-client",
                                          MQTTCLIENT_PERSISTENCE_NONE, NULL, &create_opts);
    if (rc != MQTTCLIENT_SUCCESS)
        fail("create", rc);

    /* The seed's options: user guest/guest, keep alive 60 s, retained QoS 1 will "offline". */
    MQTTClient_willOptions will = MQTTClient_willOptions_initializer;
    will.topicName = "clients/c-client/status";
    will.message = "offline";
    will.qos = 1;
    will.retained = 1;

    MQTTClient_connectOptions conn_opts = MQTTClient_connectOptions_initializer;
    MQTTClient_connectOptions conn_opts5 = MQTTClient_connectOptions_initializer5;
    MQTTClient_connectOptions *opts = v5 ? &conn_opts5 : &conn_opts;
    if (v5)
        opts->cleanstart = 1;
    else {
        opts->cleansession = 1;
        opts->MQTTVersion = MQTTVERSION_3_1_1;
    }
    opts->keepAliveInterval = 60;
    opts->username = "guest";
    opts->password = "guest";
    opts->will = &will;
    opts->connectTimeout = WAIT_MS / 1000;

    int reason_code;
    if (v5) {
        /* A will property, to show Paho C's v5 will encoding passes through midge. */
        MQTTProperties will_props = MQTTProperties_initializer;
        MQTTProperty cause;
        cause.identifier = MQTTPROPERTY_CODE_USER_PROPERTY;
        cause.value.data.data = "cause";
        cause.value.data.len = 5;
        cause.value.value.data = "crash";
        cause.value.value.len = 5;
        MQTTProperties_add(&will_props, &cause);
        MQTTResponse response = MQTTClient_connect5(client, opts, NULL, &will_props);
        MQTTProperties_free(&will_props);
        reason_code = response.reasonCode;
        MQTTResponse_free(response);
    } else {
        reason_code = MQTTClient_connect(client, opts);
    }
    if (reason_code != MQTTCLIENT_SUCCESS)
        fail("connect", reason_code);
    printf("{\"connected\":{\"version\":%d,\"reason_code\":%d,\"session_present\":%s}}\n",
           opts->returned.MQTTVersion, reason_code,
           opts->returned.sessionPresent ? "true" : "false");

    int granted;
    if (v5) {
        MQTTSubscribe_options sub_opts = MQTTSubscribe_options_initializer;
        MQTTResponse response = MQTTClient_subscribe5(client, "sensors/#", 1, &sub_opts, NULL);
        granted = response.reasonCode;
        MQTTResponse_free(response);
    } else {
        /* subscribeMany writes the granted QoS back into the array. */
        char *filters[] = {"sensors/#"};
        int qos[] = {1};
        rc = MQTTClient_subscribeMany(client, 1, filters, qos);
        if (rc != MQTTCLIENT_SUCCESS)
            fail("subscribe", rc);
        granted = qos[0];
    }
    printf("{\"subscribed\":{\"granted\":%d}}\n", granted);
    if (granted != 1)
        fail("granted QoS is not 1", granted);

    char payload[100];
    int payload_len = snprintf(payload, sizeof payload,
                               "{\"value\":22.5,\"unit\":\"celsius\",\"timestamp\":%ld}",
                               (long)time(NULL));
    MQTTClient_message message = MQTTClient_message_initializer;
    message.payload = payload;
    message.payloadlen = payload_len;
    message.qos = 1;
    message.retained = 0;
    MQTTClient_deliveryToken token;
    if (v5) {
        MQTTResponse response = MQTTClient_publishMessage5(client, OWN_TOPIC, &message, &token);
        rc = response.reasonCode;
        MQTTResponse_free(response);
    } else {
        rc = MQTTClient_publishMessage(client, OWN_TOPIC, &message, &token);
    }
    if (rc != MQTTCLIENT_SUCCESS)
        fail("publish", rc);
    /* Returns once the PUBACK for this QoS 1 message has arrived. */
    rc = MQTTClient_waitForCompletion(client, token, WAIT_MS);
    if (rc != MQTTCLIENT_SUCCESS)
        fail("no PUBACK", rc);
    printf("{\"published\":{\"topic\":\"%s\",\"payload\":", OWN_TOPIC);
    print_hex(payload, (size_t)payload_len);
    printf("}}\n");

    int got_own = 0, got_other = 0;
    while (!(got_own && got_other)) {
        char *topic = NULL;
        int topic_len = 0;
        MQTTClient_message *received = NULL;
        rc = MQTTClient_receive(client, &topic, &topic_len, &received, WAIT_MS);
        if (rc != MQTTCLIENT_SUCCESS && rc != MQTTCLIENT_TOPICNAME_TRUNCATED)
            fail("receive", rc);
        /* receive returns success without a message when the wait ends empty. */
        if (received == NULL)
            fail("no message within the wait", got_own + 2 * got_other);
        size_t len = topic_len > 0 ? (size_t)topic_len : strlen(topic);
        printf("{\"received\":{\"topic\":");
        print_string(topic, len);
        printf(",\"qos\":%d,\"retain\":%s,\"payload\":", received->qos,
               received->retained ? "true" : "false");
        print_hex(received->payload, (size_t)received->payloadlen);
        printf("}}\n");
        if (len == strlen(OWN_TOPIC) && memcmp(topic, OWN_TOPIC, len) == 0)
            got_own = 1;
        if (len == strlen(OTHER_TOPIC) && memcmp(topic, OTHER_TOPIC, len) == 0)
            got_other = 1;
        MQTTClient_freeMessage(&received);
        MQTTClient_free(topic);
    }
    printf("{\"done\":true}\n");

    /* Stay connected, never sending DISCONNECT, until the test kills this process. The
     * library's thread answers keep-alive meanwhile. Bounded, in case the test is gone. */
    sleep(60);
    fail("not killed", 0);
}
