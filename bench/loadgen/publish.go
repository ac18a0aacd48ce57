package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// A publisher sends payloads to channels the way a backend would: to Switchboard and
// the NATS reference as NATS publishes on `sb.ch.<channel>`, to Centrifugo through its
// HTTP API (`/api/batch`, one request per batch).
type publisher interface {
	publish(channels []string, payloads [][]byte) error
	flush() error
	close()
}

func newPublisher(url, apiKey string, timeout time.Duration) (publisher, error) {
	switch {
	case strings.HasPrefix(url, "nats://"):
		nc, err := nats.Connect(url, nats.Name("loadgen-publisher"), nats.Timeout(timeout))
		if err != nil {
			return nil, fmt.Errorf("publisher: %w", err)
		}
		return &natsPublisher{nc}, nil
	case strings.HasPrefix(url, "http://"):
		return &centrifugoPublisher{
			url: strings.TrimSuffix(url, "/") + "/batch", key: apiKey,
			client: &http.Client{Timeout: timeout},
		}, nil
	}
	return nil, fmt.Errorf("-publish-url %q: want nats://host:port or http://host:port/api", url)
}

type natsPublisher struct{ nc *nats.Conn }

func (p *natsPublisher) publish(channels []string, payloads [][]byte) error {
	for i, ch := range channels {
		if err := p.nc.Publish(subject(ch), payloads[i]); err != nil {
			return err
		}
	}
	return nil
}

func (p *natsPublisher) flush() error { return p.nc.FlushTimeout(30 * time.Second) }
func (p *natsPublisher) close()       { p.nc.Close() }

type centrifugoPublisher struct {
	url, key string
	client   *http.Client
	body     bytes.Buffer
}

func (p *centrifugoPublisher) publish(channels []string, payloads [][]byte) error {
	p.body.Reset()
	p.body.WriteString(`{"commands":[`)
	for i, ch := range channels {
		if i > 0 {
			p.body.WriteByte(',')
		}
		p.body.WriteString(`{"publish":{"channel":"` + ch + `","data":`)
		p.body.Write(payloads[i])
		p.body.WriteString(`}}`)
	}
	p.body.WriteString(`]}`)
	req, err := http.NewRequest(http.MethodPost, p.url, bytes.NewReader(p.body.Bytes()))
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", p.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || bytes.Contains(reply, []byte(`"error"`)) {
		return fmt.Errorf("centrifugo api: HTTP %d %.200s", resp.StatusCode, reply)
	}
	return nil
}

func (p *centrifugoPublisher) flush() error { return nil }
func (p *centrifugoPublisher) close()       { p.client.CloseIdleConnections() }

// payload is `{"sbt":<unix ns now>,"m":<measured>,"p":"xxx…"}`, padded to `size` bytes.
func payload(size int, measured bool) []byte {
	m := "0"
	if measured {
		m = "1"
	}
	head := `{"sbt":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `,"m":` + m + `,"p":"`
	pad := size - len(head) - 2
	if pad < 0 {
		pad = 0
	}
	return []byte(head + strings.Repeat("x", pad) + `"}`)
}

// paced publishes `rate` messages per second for `d` (rate 0: `count` messages at once,
// in batches of `batch`), channel of message j = channels[j % len(channels)]. It returns
// how many it published to each channel index.
func paced(p publisher, channels []string, rate float64, d time.Duration, count, size, batch int, measured bool) ([]int, error) {
	perChannel := make([]int, len(channels))
	var chs []string
	var pls [][]byte
	sent := 0
	send := func(n int) error {
		chs, pls = chs[:0], pls[:0]
		for k := 0; k < n; k++ {
			idx := (sent + k) % len(channels)
			chs = append(chs, channels[idx])
			pls = append(pls, payload(size, measured))
			perChannel[idx]++
		}
		sent += n
		return p.publish(chs, pls)
	}
	if rate <= 0 {
		for sent < count {
			if err := send(min(batch, count-sent)); err != nil {
				return perChannel, err
			}
		}
		return perChannel, p.flush()
	}
	start := time.Now()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		elapsed := time.Since(start)
		if elapsed >= d {
			break
		}
		due := int(rate * elapsed.Seconds())
		for due > sent {
			if err := send(min(batch, due-sent)); err != nil {
				return perChannel, err
			}
		}
		<-tick.C
	}
	if due := int(rate * d.Seconds()); due > sent {
		if err := send(due - sent); err != nil {
			return perChannel, err
		}
	}
	return perChannel, p.flush()
}
