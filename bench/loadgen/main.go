// Command loadgen is the benchmarks' load generator (bench/compare.py builds and runs
// it): WebSocket clients speaking Switchboard's protocol, NATS over WebSocket or
// Centrifugo's JSON protocol, one goroutine per connection, so that on a small machine
// the server under test, not the client, is what runs out of CPU.
//
// Modes: idle (hold N connections, sample server RSS), handshakes (open/close with a
// fresh token each time, count completed set-ups per server CPU-second), fanout (N
// subscribers of one channel, a burst or paced publish), rooms (N connections over C
// channels, a paced publish). It prints one JSON object on stdout; progress on stderr.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type options struct {
	proto, mode, url, secret, user    string
	publishURL, apiKey, pids, channel string
	n, channels, concurrency          int
	messages, size, batch             int
	rate                              float64
	seconds, warmup, hold, quiet      float64
	timeout                           time.Duration
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&o.proto, "proto", "", "client protocol: switchboard, nats or centrifugo")
	fs.StringVar(&o.mode, "mode", "", "idle, handshakes, fanout or rooms")
	fs.StringVar(&o.url, "url", "", "WebSocket URL of the server under test; several, comma-separated: connections go round-robin over them")
	fs.StringVar(&o.secret, "secret", "", "HS256 secret the tokens are signed with (switchboard, centrifugo)")
	fs.StringVar(&o.user, "user-prefix", "u", "user ids are <prefix>-<n>, one per connection")
	fs.StringVar(&o.publishURL, "publish-url", "", "fanout/rooms: nats://host:port, or Centrifugo's http://host:port/api")
	fs.StringVar(&o.apiKey, "api-key", "", "Centrifugo HTTP API key")
	fs.StringVar(&o.pids, "pids", "", "name=pid,... processes whose CPU (utime+stime) and RSS are reported; the first is the server")
	fs.StringVar(&o.channel, "channel", "bench", "idle/fanout: the channel every connection subscribes to (idle: empty = none)")
	fs.IntVar(&o.n, "n", 100, "connections (idle, fanout, rooms)")
	fs.IntVar(&o.channels, "channels", 10, "rooms: channels; connection i joins channel i mod channels")
	fs.IntVar(&o.concurrency, "concurrency", 100, "connection set-ups in flight (handshakes: loops)")
	fs.IntVar(&o.messages, "messages", 100, "fanout: messages published")
	fs.IntVar(&o.size, "size", 100, "payload bytes")
	fs.IntVar(&o.batch, "batch", 100, "most messages per publish call (one Centrifugo /api/batch request)")
	fs.Float64Var(&o.rate, "rate", 0, "messages per second (fanout: 0 = burst; rooms: required)")
	fs.Float64Var(&o.seconds, "seconds", 10, "handshakes: duration; rooms: measured publishing time")
	fs.Float64Var(&o.warmup, "warmup", 2, "rooms: publishing at the same rate before the measurement, s")
	fs.Float64Var(&o.hold, "hold", 3, "idle: settle time before RSS is sampled, s; fanout/rooms: pause before publishing")
	fs.Float64Var(&o.quiet, "quiet", 5, "fanout/rooms: give up waiting for deliveries after this long without one, s")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "per connection set-up / subscribe / publish call")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case o.proto != protoSwitchboard && o.proto != protoNATS && o.proto != protoCentrifugo:
		return nil, fmt.Errorf("-proto %q: want switchboard, nats or centrifugo", o.proto)
	case o.mode != "idle" && o.mode != "handshakes" && o.mode != "fanout" && o.mode != "rooms":
		return nil, fmt.Errorf("-mode %q: want idle, handshakes, fanout or rooms", o.mode)
	case o.url == "":
		return nil, errors.New("-url is required")
	case o.proto != protoNATS && o.secret == "":
		return nil, fmt.Errorf("-secret is required for -proto %s", o.proto)
	case (o.mode == "fanout" || o.mode == "rooms") && o.publishURL == "":
		return nil, fmt.Errorf("-publish-url is required for -mode %s", o.mode)
	case o.mode == "rooms" && o.rate <= 0:
		return nil, errors.New("-rate must be > 0 for -mode rooms")
	case o.n < 1 || o.concurrency < 1 || o.channels < 1 || o.batch < 1:
		return nil, errors.New("-n, -concurrency, -channels and -batch must be >= 1")
	case o.mode == "rooms" && o.channels > o.n:
		return nil, fmt.Errorf("-channels %d is more than -n %d connections", o.channels, o.n)
	}
	return o, nil
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", a...)
}

// errorCounts keeps the first words of each distinct error, counted.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]int
	n  int
}

func (e *errorCounts) add(err error) {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	if len(e.m) < 20 {
		e.m[s]++
	}
	e.n++
	e.mu.Unlock()
}

func (e *errorCounts) report() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// group is a set of open, subscribed connections with their readers.
type group struct {
	conns   []*conn
	channel []int // index into the channel list, per connection
	closing atomic.Bool
	wg      sync.WaitGroup
}

// connectAll opens n connections (user <prefix>-<i>), subscribes connection i to
// channels[i % len(channels)] (none if channels is empty) and starts its reader.
func connectAll(o *options, c *clientConfig, channels []string, s *stats) (*group, map[string]any) {
	g := &group{}
	var mu sync.Mutex
	var errs errorCounts
	next := atomic.Int64{}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.n {
					return
				}
				cn, err := c.open(o.user + "-" + strconv.Itoa(i))
				if err != nil {
					errs.add(err)
					continue
				}
				idx := -1
				if len(channels) > 0 {
					idx = i % len(channels)
					if err := cn.subscribe(channels[idx], o.timeout); err != nil {
						errs.add(err)
						cn.abort()
						continue
					}
				}
				mu.Lock()
				g.conns = append(g.conns, cn)
				g.channel = append(g.channel, idx)
				mu.Unlock()
				g.wg.Add(1)
				go func() {
					defer g.wg.Done()
					cn.readLoop(s, &g.closing)
				}()
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	logf("%d/%d connections ready in %.1fs (%d failed)", len(g.conns), o.n, secs, errs.n)
	return g, map[string]any{
		"requested": o.n, "connected": len(g.conns), "failed": errs.n,
		"errors": errs.report(), "seconds": round3(secs),
	}
}

// abortAll drops every connection without a closing handshake and waits for the readers.
func (g *group) abortAll() {
	g.closing.Store(true)
	for _, cn := range g.conns {
		cn.abort()
	}
	g.wg.Wait()
}

// subscribers per channel index.
func (g *group) perChannel(n int) []int {
	out := make([]int, n)
	for _, idx := range g.channel {
		if idx >= 0 {
			out[idx]++
		}
	}
	return out
}

func runIdle(o *options, c *clientConfig, procs []watched) map[string]any {
	before := rssAll(procs)
	s := newStats()
	var channels []string
	if o.channel != "" {
		channels = []string{o.channel}
	}
	win := startWindow(procs)
	g, connect := connectAll(o, c, channels, s)
	cpu := win.end()
	time.Sleep(time.Duration(o.hold * float64(time.Second)))
	after := rssAll(procs)
	dropped, reasons := s.droppedTotal()
	open := len(g.conns) - dropped
	g.abortAll()
	rss := map[string]any{}
	for _, p := range procs {
		d := after[p.Name] - before[p.Name]
		entry := map[string]any{"before_kib": before[p.Name], "after_kib": after[p.Name], "delta_kib": d}
		if open > 0 {
			entry["kib_per_connection"] = round3(float64(d) / float64(open))
		}
		rss[p.Name] = entry
	}
	return map[string]any{
		"connect": connect, "connect_cpu": cpu, "open_at_sample": open,
		"dropped": dropped, "dropped_reasons": reasons, "rss": rss,
	}
}

func runHandshakes(o *options, c *clientConfig, procs []watched) map[string]any {
	var done atomic.Int64
	var errs errorCounts
	var lat Histogram
	var serial atomic.Int64
	stop := atomic.Bool{}
	var wg sync.WaitGroup
	d := time.Duration(o.seconds * float64(time.Second))
	win := startWindow(procs)
	start := time.Now()
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				t0 := time.Now()
				cn, err := c.open(o.user + "-" + strconv.FormatInt(serial.Add(1), 10))
				if err != nil {
					if !stop.Load() {
						errs.add(err)
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				if !stop.Load() {
					done.Add(1)
					lat.Add(time.Since(t0).Microseconds())
				}
				cn.closeClean(o.timeout)
			}
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	completed := done.Load()
	elapsed := time.Since(start).Seconds()
	cpu := win.end()
	wg.Wait()
	return map[string]any{
		"handshakes": completed, "seconds": round3(elapsed), "per_s": round3(float64(completed) / elapsed),
		"attempted_users": serial.Load(), "errors_total": errs.n, "errors": errs.report(),
		"latency_us": lat.Summary(), "cpu": cpu,
	}
}

// runPublish is fanout and rooms: subscribers on channels, then publishes, then waits
// for every delivery (or `quiet` seconds without one).
func runPublish(o *options, c *clientConfig, procs []watched) (map[string]any, error) {
	var channels []string
	if o.mode == "fanout" {
		channels = []string{o.channel}
	} else {
		for i := 0; i < o.channels; i++ {
			channels = append(channels, "room-"+strconv.Itoa(i))
		}
	}
	s := newStats()
	g, connect := connectAll(o, c, channels, s)
	defer g.abortAll()
	if len(g.conns) == 0 {
		return nil, errors.New("no connection could be opened")
	}
	subs := g.perChannel(len(channels))
	pub, err := newPublisher(o.publishURL, o.apiKey, o.timeout)
	if err != nil {
		return nil, err
	}
	defer pub.close()
	time.Sleep(time.Duration(o.hold * float64(time.Second)))
	out := map[string]any{"connect": connect, "channels": len(channels)}
	if o.mode == "rooms" && o.warmup > 0 {
		if _, err := paced(pub, channels, o.rate, time.Duration(o.warmup*float64(time.Second)), 0, o.size, o.batch, false); err != nil {
			return nil, err
		}
	}
	win := startWindow(procs)
	t0 := time.Now()
	d := time.Duration(o.seconds * float64(time.Second))
	if o.mode == "fanout" {
		d = 0
	}
	perChannel, err := paced(pub, channels, o.rate, d, o.messages, o.size, o.batch, true)
	if err != nil {
		return nil, err
	}
	pubSecs := time.Since(t0).Seconds()
	expected := int64(0)
	published := 0
	for i, n := range perChannel {
		expected += int64(n * subs[i])
		published += n
	}
	quiet := time.Duration(o.quiet * float64(time.Second))
	lastCount, lastChange := int64(-1), time.Now()
	for {
		got := s.deliveries.Load()
		if got >= expected {
			break
		}
		if got != lastCount {
			lastCount, lastChange = got, time.Now()
		} else if time.Since(lastChange) > quiet {
			logf("gave up waiting: %d of %d deliveries", got, expected)
			break
		}
		time.Sleep(time.Millisecond)
	}
	cpu := win.end()
	got := s.deliveries.Load()
	last := time.Unix(0, s.lastRecv.Load())
	window := last.Sub(t0).Seconds()
	dropped, reasons := s.droppedTotal()
	for k, v := range map[string]any{
		"published": published, "publish_s": round3(pubSecs), "rate": o.rate,
		"expected_deliveries": expected, "deliveries": got, "warmup_deliveries": s.warmup.Load(),
		"frames": s.frames.Load(), "window_s": round3(window),
		"drain_ms":         round3(last.Sub(t0.Add(time.Duration(pubSecs*float64(time.Second)))).Seconds() * 1000),
		"deliveries_per_s": round3(float64(got) / max(window, 1e-9)),
		"latency_us":       s.latency.Summary(), "cpu": cpu, "dropped": dropped, "dropped_reasons": reasons,
	} {
		out[k] = v
	}
	return out, nil
}

func run(args []string) (map[string]any, error) {
	o, err := parseFlags(args)
	if err != nil {
		return nil, err
	}
	procs, err := parseWatched(o.pids)
	if err != nil {
		return nil, err
	}
	c := newClientConfig(o.proto, o.url, []byte(o.secret), o.timeout)
	report := map[string]any{"proto": o.proto, "mode": o.mode, "started_unix": time.Now().Unix()}
	if o.mode != "handshakes" {
		report["n"] = o.n
	}
	var res map[string]any
	switch o.mode {
	case "idle":
		res = runIdle(o, c, procs)
	case "handshakes":
		res = runHandshakes(o, c, procs)
	default:
		res, err = runPublish(o, c, procs)
		if err != nil {
			return nil, err
		}
	}
	for k, v := range res {
		report[k] = v
	}
	return report, nil
}

func main() {
	report, err := run(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil { // keys sorted
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
