// devicego: device-like MQTT traffic from an independent client library, to cross-check
// `midge bench device` (bench/compare.sh, the go-device-* scenarios).
//
// N publisher/subscriber pairs through Eclipse Paho's Go client (Debian's
// golang-github-eclipse-paho.mqtt.golang, built offline in GOPATH mode): publisher i
// publishes to devicego/i at its share of -rate, its schedule offset by i/N of the period
// so that the publishers do not fire together; subscriber i subscribes to devicego/i.
// Paho writes every packet in a write of its own, and Go sets TCP_NODELAY. The payload
// carries the send time and a sequence number: latency, loss, duplicates and order are
// checked per pair. With -broker-pid, the broker's CPU time over the measured window
// (/proc/PID/stat) gives CPU per message.
//
// It prints one JSON object with the fields bench/table.py reads from `midge bench --json`.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// pair is one publisher's and its subscriber's state.
type pair struct {
	sent     uint64 // published so far (the next sequence number)
	mu       sync.Mutex
	seen     []bool    // sequence numbers received
	maxSeq   int64     // highest sequence number received, -1 for none
	received uint64    // in all, duplicates included
	dup      uint64    // received again
	reorder  uint64    // received after a higher one
	lat      []float64 // µs, for messages sent inside the measured window
}

// cpuTicks is a process's user and system time in clock ticks (utime + stime).
func cpuTicks(pid string) (uint64, error) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields start after its closing parenthesis.
	text := string(raw)
	fields := strings.Fields(text[strings.LastIndexByte(text, ')')+2:])
	utime, _ := strconv.ParseUint(fields[11], 10, 64)
	stime, _ := strconv.ParseUint(fields[12], 10, 64)
	return utime + stime, nil
}

// ticksPerSecond is USER_HZ, 100 on Linux.
const ticksPerSecond = 100.0

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "devicego: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	host := flag.String("host", "127.0.0.1", "broker host")
	port := flag.Int("p", 1883, "broker port")
	n := flag.Int("N", 500, "publisher/subscriber pairs")
	qos := flag.Int("q", 0, "QoS of publishes and subscriptions (0 or 1)")
	rate := flag.Float64("rate", 10000, "messages per second, over all publishers")
	duration := flag.Float64("d", 5, "seconds measured, after the warm-up")
	warmup := flag.Float64("w", 1, "seconds of traffic before measuring")
	drain := flag.Float64("drain", 2, "seconds to wait for the last messages")
	brokerPid := flag.String("broker-pid", "", "the broker's process id, for its CPU time")
	// Accepted for the command line bench/compare.sh gives `midge bench`; the output is
	// always JSON and nothing else.
	flag.Bool("json", true, "ignored: the report is always JSON")
	flag.Bool("quiet", true, "ignored: nothing but the report is printed")
	flag.Parse()
	if *qos < 0 || *qos > 1 {
		fail("-q must be 0 or 1")
	}

	url := fmt.Sprintf("tcp://%s:%d", *host, *port)
	options := func(id string) *mqtt.ClientOptions {
		return mqtt.NewClientOptions().AddBroker(url).SetClientID(id).
			SetCleanSession(true).SetAutoReconnect(false).SetKeepAlive(60 * time.Second).
			SetConnectTimeout(30 * time.Second).SetProtocolVersion(4)
	}
	var epoch = time.Now()
	var windowStart, windowEnd int64 // ns since epoch; set once the warm-up is over
	pairs := make([]*pair, *n)
	subs := make([]mqtt.Client, *n)
	pubs := make([]mqtt.Client, *n)

	// Connect and subscribe 64 at a time, so no broker's listen queue overflows.
	connect := func(count int, each func(i int) error) {
		var wg sync.WaitGroup
		var failed atomic.Value
		gate := make(chan struct{}, 64)
		for i := 0; i < count; i++ {
			wg.Add(1)
			gate <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-gate }()
				if err := each(i); err != nil {
					failed.Store(err)
				}
			}(i)
		}
		wg.Wait()
		if err, ok := failed.Load().(error); ok {
			fail("%v", err)
		}
	}
	connect(*n, func(i int) error {
		p := &pair{maxSeq: -1}
		pairs[i] = p
		c := mqtt.NewClient(options(fmt.Sprintf("devicego-sub-%d", i)))
		if t := c.Connect(); t.Wait() && t.Error() != nil {
			return fmt.Errorf("subscriber %d: %v", i, t.Error())
		}
		handler := func(_ mqtt.Client, m mqtt.Message) {
			now := time.Since(epoch).Nanoseconds()
			payload := m.Payload()
			if len(payload) < 16 {
				return
			}
			sentAt := int64(binary.BigEndian.Uint64(payload[0:8]))
			seq := int64(binary.BigEndian.Uint64(payload[8:16]))
			p.mu.Lock()
			defer p.mu.Unlock()
			p.received++
			for int64(len(p.seen)) <= seq {
				p.seen = append(p.seen, false)
			}
			if p.seen[seq] {
				p.dup++
				return
			}
			p.seen[seq] = true
			if seq < p.maxSeq {
				p.reorder++
			} else {
				p.maxSeq = seq
			}
			start, end := atomic.LoadInt64(&windowStart), atomic.LoadInt64(&windowEnd)
			if start > 0 && sentAt >= start && (end == 0 || sentAt < end) {
				p.lat = append(p.lat, float64(now-sentAt)/1000)
			}
		}
		topic := fmt.Sprintf("devicego/%d", i)
		if t := c.Subscribe(topic, byte(*qos), handler); t.Wait() && t.Error() != nil {
			return fmt.Errorf("subscribe %d: %v", i, t.Error())
		}
		subs[i] = c
		return nil
	})
	connect(*n, func(i int) error {
		c := mqtt.NewClient(options(fmt.Sprintf("devicego-pub-%d", i)))
		if t := c.Connect(); t.Wait() && t.Error() != nil {
			return fmt.Errorf("publisher %d: %v", i, t.Error())
		}
		pubs[i] = c
		return nil
	})

	// Each publisher at rate/N a second, its schedule offset by i/N of the period.
	period := time.Duration(float64(*n) / *rate * float64(time.Second))
	stop := make(chan struct{})
	var publishers sync.WaitGroup
	begin := time.Now().Add(100 * time.Millisecond)
	for i := 0; i < *n; i++ {
		publishers.Add(1)
		go func(i int) {
			defer publishers.Done()
			p, c := pairs[i], pubs[i]
			topic := fmt.Sprintf("devicego/%d", i)
			next := begin.Add(period * time.Duration(i) / time.Duration(*n))
			for {
				wait := time.Until(next)
				if wait > 0 {
					select {
					case <-stop:
						return
					case <-time.After(wait):
					}
				} else {
					select {
					case <-stop:
						return
					default:
					}
				}
				payload := make([]byte, 16)
				binary.BigEndian.PutUint64(payload[0:8], uint64(time.Since(epoch).Nanoseconds()))
				binary.BigEndian.PutUint64(payload[8:16], atomic.AddUint64(&p.sent, 1)-1)
				// Not waited for: the next publish goes at its time whatever the broker does.
				c.Publish(topic, byte(*qos), false, payload)
				next = next.Add(period)
			}
		}(i)
	}

	time.Sleep(time.Until(begin) + time.Duration(*warmup*float64(time.Second)))
	var brokerFrom, genFrom uint64
	if *brokerPid != "" {
		var err error
		if brokerFrom, err = cpuTicks(*brokerPid); err != nil {
			fail("broker CPU: %v", err)
		}
	}
	genFrom, _ = cpuTicks("self")
	atomic.StoreInt64(&windowStart, time.Since(epoch).Nanoseconds())
	time.Sleep(time.Duration(*duration * float64(time.Second)))
	atomic.StoreInt64(&windowEnd, time.Since(epoch).Nanoseconds())
	var brokerTo uint64
	if *brokerPid != "" {
		brokerTo, _ = cpuTicks(*brokerPid)
	}
	genTo, _ := cpuTicks("self")
	close(stop)
	publishers.Wait()
	time.Sleep(time.Duration(*drain * float64(time.Second)))

	var sent, received, lost, dup, reorder uint64
	var lat []float64
	for _, p := range pairs {
		p.mu.Lock()
		sent += atomic.LoadUint64(&p.sent)
		received += p.received
		dup += p.dup
		reorder += p.reorder
		for s := uint64(0); s < atomic.LoadUint64(&p.sent); s++ {
			if s >= uint64(len(p.seen)) || !p.seen[s] {
				lost++
			}
		}
		lat = append(lat, p.lat...)
		p.mu.Unlock()
	}
	for i := range pubs {
		pubs[i].Disconnect(0)
		subs[i].Disconnect(0)
	}
	sort.Float64s(lat)
	inWindow := float64(len(lat))
	report := map[string]interface{}{
		"tool":              "devicego (Eclipse Paho Go client)",
		"pairs":             *n,
		"qos":               *qos,
		"sent":              sent,
		"received":          received,
		"lost":              lost,
		"duplicated":        dup,
		"reordered":         reorder,
		"delivered_per_sec": inWindow / *duration,
		"latency_us": map[string]float64{
			"p50":  percentile(lat, 50),
			"p99":  percentile(lat, 99),
			"p999": percentile(lat, 99.9),
		},
		"generator": map[string]float64{
			"cpu_pct": float64(genTo-genFrom) / ticksPerSecond / *duration * 100,
		},
	}
	if *brokerPid != "" && inWindow > 0 {
		cpu := float64(brokerTo-brokerFrom) / ticksPerSecond
		report["broker"] = map[string]float64{
			"cpu_us_per_msg": cpu / inWindow * 1e6,
			"cpu_pct":        cpu / *duration * 100,
		}
	}
	out, _ := json.Marshal(report)
	fmt.Println(string(out))
}
