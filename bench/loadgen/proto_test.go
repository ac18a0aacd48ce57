package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDeliveryMeasuredAndWarmup(t *testing.T) {
	s := newStats()
	now := int64(2_000_000_000)
	if !s.delivery([]byte(`{"type":"event","payload":{"channel":"c","data":{"sbt":1000000000,"m":1,"p":"x"},"ts":1}}`), now) {
		t.Fatal("measured delivery not recognised")
	}
	if s.delivery([]byte(`{"sbt":1000000000,"m":0,"p":"x"}`), now) {
		t.Fatal("a warm-up delivery counted as measured")
	}
	if s.delivery([]byte(`{"type":"ack","id":"s"}`), now) {
		t.Fatal("a line without a timestamp counted")
	}
	sum := s.latency.Summary()
	if s.deliveries.Load() != 1 || s.warmup.Load() != 1 || sum["max"].(int64) != 1_000_000 {
		t.Fatalf("deliveries %d warmup %d latency %v", s.deliveries.Load(), s.warmup.Load(), sum)
	}
}

// A MSG split across WebSocket frames anywhere (header, payload, trailing CRLF) counts
// once, and a server PING in between does not disturb the parser.
func TestNATSStreamAcrossFrames(t *testing.T) {
	body := `{"sbt":1,"m":1,"p":"xx"}`
	msg := "MSG sb.ch.room-1 1 " + strconv.Itoa(len(body)) + "\r\n" + body + "\r\n"
	stream := msg + "PING\r\n" + msg
	for cut := 1; cut < len(stream); cut++ {
		s := newStats()
		cn := &conn{proto: protoNATS}
		n1, ping1 := cn.natsDeliveries([]byte(stream[:cut]), s, 10)
		n2, ping2 := cn.natsDeliveries([]byte(stream[cut:]), s, 10)
		if n1+n2 != 2 || ping1 == ping2 || len(cn.buf) != 0 {
			t.Fatalf("cut at %d: %d deliveries, pings %v %v, %q left", cut, n1+n2, ping1, ping2, cn.buf)
		}
	}
}

func TestFlagErrorsNameTheFlag(t *testing.T) {
	cases := map[string][]string{
		"-proto":       {"-proto", "mqtt", "-mode", "idle", "-url", "ws://x"},
		"-mode":        {"-proto", "nats", "-mode", "storm", "-url", "ws://x"},
		"-url":         {"-proto", "nats", "-mode", "idle"},
		"-secret":      {"-proto", "switchboard", "-mode", "idle", "-url", "ws://x"},
		"-publish-url": {"-proto", "nats", "-mode", "fanout", "-url", "ws://x"},
		"-rate":        {"-proto", "nats", "-mode", "rooms", "-url", "ws://x", "-publish-url", "nats://x"},
		"-channels":    {"-proto", "nats", "-mode", "rooms", "-url", "ws://x", "-publish-url", "nats://x", "-rate", "1", "-n", "2", "-channels", "3"},
	}
	for flagName, args := range cases {
		_, err := parseFlags(args)
		if err == nil || !strings.Contains(err.Error(), flagName) {
			t.Errorf("%v: error %v does not name %s", args, err, flagName)
		}
	}
	if _, err := parseWatched("server=12,backbone"); err == nil || !strings.Contains(err.Error(), "-pids") {
		t.Errorf("bad -pids accepted: %v", err)
	}
}

func TestPayloadSizeAndMarker(t *testing.T) {
	p := payload(100, true)
	if len(p) != 100 || !strings.Contains(string(p), `"m":1`) {
		t.Fatalf("payload %q (%d bytes)", p, len(p))
	}
}

// Several servers: connections alternate between them, as a Service spreads them
// over pods; one server gets them all.
func TestConnectionsGoRoundRobin(t *testing.T) {
	c := newClientConfig(protoSwitchboard, "ws://a/ws,ws://b/ws", nil, time.Second)
	var got []string
	for i := 0; i < 5; i++ {
		got = append(got, c.nextURL())
	}
	if strings.Join(got, " ") != "ws://a/ws ws://b/ws ws://a/ws ws://b/ws ws://a/ws" {
		t.Fatalf("urls in order %v", got)
	}
	one := newClientConfig(protoNATS, "ws://only/", nil, time.Second)
	if one.nextURL() != "ws://only/" || one.nextURL() != "ws://only/" {
		t.Fatal("a single url is not always used")
	}
}

// Processes given under one name (the edges of one target) are reported summed.
func TestWatchedProcessesOfOneNameAreSummed(t *testing.T) {
	self := os.Getpid()
	procs := []watched{{"server", self}, {"server", self}, {"other", self}}
	rss := rssAll(procs)
	if rss["other"] <= 0 || rss["server"] < 19*rss["other"]/10 || rss["server"] > 21*rss["other"]/10 {
		t.Fatalf("rss %v", rss)
	}
	w := startWindow(procs)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		u, k, _ := cpuTimes(self)
		if u+k-w.u0[0]-w.k0[0] >= 0.05 {
			break
		}
	}
	out := w.end()
	server := out["server"].(map[string]any)["cpu_s"].(float64)
	other := out["other"].(map[string]any)["cpu_s"].(float64)
	if other < 0.04 || server < 1.9*other || server > 2.1*other+0.02 {
		t.Fatalf("server %.3f s, other %.3f s", server, other)
	}
}
