package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// The three client protocols: how a connection is set up (until the server says it is
// ready: `welcome`, NATS `PONG`, Centrifugo's connect reply), how it subscribes, and how
// deliveries are counted in what it receives.
const (
	protoSwitchboard = "switchboard"
	protoNATS        = "nats"
	protoCentrifugo  = "centrifugo"
)

type clientConfig struct {
	proto   string
	urls    []string     // connections go round-robin over these, as a Service spreads them over pods
	next    atomic.Int64 // the next connection's index into urls
	secret  []byte
	timeout time.Duration
	dialer  *websocket.Dialer
}

func newClientConfig(proto, url string, secret []byte, timeout time.Duration) *clientConfig {
	return &clientConfig{
		proto:   proto,
		urls:    strings.Split(url, ","),
		secret:  secret,
		timeout: timeout,
		dialer: &websocket.Dialer{
			NetDial:           (&net.Dialer{Timeout: timeout}).Dial,
			HandshakeTimeout:  timeout,
			ReadBufferSize:    4096,
			WriteBufferSize:   1024,
			EnableCompression: false,
		},
	}
}

type conn struct {
	ws    *websocket.Conn
	proto string
	buf   []byte // NATS: bytes of a protocol line or MSG not complete yet
}

// subject is the NATS subject a Switchboard channel travels on (and the NATS
// reference's clients subscribe to): channel names here have no ':'.
func subject(channel string) string { return "sb.ch." + channel }

// nextURL is where the next connection goes: round-robin over the servers given.
func (c *clientConfig) nextURL() string {
	return c.urls[int((c.next.Add(1)-1)%int64(len(c.urls)))]
}

// open dials and completes the protocol's own handshake for `user`.
func (c *clientConfig) open(user string) (*conn, error) {
	var header http.Header
	if c.proto == protoSwitchboard {
		header = http.Header{"Sec-WebSocket-Protocol": {"switchboard.v1, bearer." + mintHS256(c.secret, user)}}
	}
	ws, resp, err := c.dialer.Dial(c.nextURL(), header)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("upgrade refused: HTTP %d", resp.StatusCode)
		}
		return nil, err
	}
	cn := &conn{ws: ws, proto: c.proto}
	_ = ws.SetReadDeadline(time.Now().Add(c.timeout))
	switch c.proto {
	case protoSwitchboard:
		err = cn.awaitLine(func(line []byte) (bool, error) {
			if bytes.Contains(line, []byte(`"type":"welcome"`)) {
				return true, nil
			}
			return false, fmt.Errorf("expected welcome, got %.120s", line)
		})
	case protoNATS:
		err = cn.natsRoundTrip(`CONNECT {"verbose":false,"protocol":1,"pedantic":false}` + "\r\n")
	case protoCentrifugo:
		cmd := `{"id":1,"connect":{"token":"` + mintHS256(c.secret, user) + `","name":"loadgen"}}`
		err = cn.centrifugoReply(cmd, `{"id":1,`)
	}
	if err != nil {
		cn.abort()
		return nil, err
	}
	_ = ws.SetReadDeadline(time.Time{})
	return cn, nil
}

// subscribe joins a channel and returns once the server confirmed it.
func (cn *conn) subscribe(channel string, timeout time.Duration) error {
	_ = cn.ws.SetReadDeadline(time.Now().Add(timeout))
	defer cn.ws.SetReadDeadline(time.Time{})
	switch cn.proto {
	case protoSwitchboard:
		frame := `{"type":"subscribe","id":"s","payload":{"channel":"` + channel + `"}}`
		if err := cn.ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			return err
		}
		return cn.awaitLine(func(line []byte) (bool, error) {
			if bytes.Contains(line, []byte(`"type":"ack"`)) {
				return true, nil
			}
			if bytes.Contains(line, []byte(`"type":"error"`)) {
				return false, fmt.Errorf("subscribe refused: %.120s", line)
			}
			return false, nil
		})
	case protoNATS:
		return cn.natsRoundTrip("SUB " + subject(channel) + " 1\r\n")
	default:
		return cn.centrifugoReply(`{"id":2,"subscribe":{"channel":"`+channel+`"}}`, `{"id":2,`)
	}
}

// awaitLine reads frames until `done` accepts a line (JSON lines, several per frame).
func (cn *conn) awaitLine(done func([]byte) (bool, error)) error {
	for {
		_, data, err := cn.ws.ReadMessage()
		if err != nil {
			return err
		}
		for _, line := range bytes.Split(data, []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			ok, err := done(line)
			if err != nil || ok {
				return err
			}
		}
	}
}

// centrifugoReply sends one command and waits for the reply with its id.
func (cn *conn) centrifugoReply(cmd, prefix string) error {
	if err := cn.ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
		return err
	}
	return cn.awaitLine(func(line []byte) (bool, error) {
		if !bytes.HasPrefix(line, []byte(prefix)) {
			return false, nil
		}
		if bytes.Contains(line, []byte(`"error":`)) {
			return false, fmt.Errorf("centrifugo refused: %.160s", line)
		}
		return true, nil
	})
}

// natsRoundTrip sends `ops` + PING and returns at the PONG (INFO comes first).
func (cn *conn) natsRoundTrip(ops string) error {
	if err := cn.ws.WriteMessage(websocket.BinaryMessage, []byte(ops+"PING\r\n")); err != nil {
		return err
	}
	for {
		_, data, err := cn.ws.ReadMessage()
		if err != nil {
			return err
		}
		cn.buf = append(cn.buf, data...)
		if i := bytes.Index(cn.buf, []byte("-ERR")); i >= 0 {
			return fmt.Errorf("nats refused: %.120s", cn.buf[i:])
		}
		if i := bytes.Index(cn.buf, []byte("PONG\r\n")); i >= 0 {
			cn.buf = append(cn.buf[:0], cn.buf[i+6:]...)
			return nil
		}
	}
}

// closeClean runs the WebSocket closing handshake: close frame, wait for the server's.
func (cn *conn) closeClean(timeout time.Duration) {
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if cn.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(timeout)) == nil {
		_ = cn.ws.SetReadDeadline(time.Now().Add(timeout))
		for {
			if _, _, err := cn.ws.NextReader(); err != nil {
				break
			}
		}
	}
	_ = cn.ws.NetConn().Close()
}

// abort drops the TCP connection (fast teardown of many idle clients).
func (cn *conn) abort() { _ = cn.ws.NetConn().Close() }

// stats are shared by every reader of a run.
type stats struct {
	deliveries atomic.Int64 // measured deliveries (payload "m":1)
	warmup     atomic.Int64 // deliveries of warm-up messages ("m":0)
	frames     atomic.Int64 // WebSocket frames that carried at least one measured delivery
	lastRecv   atomic.Int64 // unix ns of the last measured delivery
	latency    Histogram    // publish -> receive, µs, measured deliveries only
	mu         sync.Mutex
	dropped    map[string]int // connections the server closed, by reason
}

func newStats() *stats { return &stats{dropped: map[string]int{}} }

func (s *stats) drop(err error) {
	reason := err.Error()
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		reason = fmt.Sprintf("close %d %s", ce.Code, ce.Text)
	}
	if len(reason) > 100 {
		reason = reason[:100]
	}
	s.mu.Lock()
	s.dropped[reason]++
	s.mu.Unlock()
}

func (s *stats) droppedTotal() (int, map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	out := map[string]int{}
	for k, v := range s.dropped {
		n += v
		out[k] = v
	}
	return n, out
}

var (
	sbtKey = []byte(`"sbt":`)
	mKey   = []byte(`"m":`)
)

// delivery records one payload `{"sbt":<publish unix ns>,"m":<0|1>,...}` seen at `now`;
// true if it was a measured one (not warm-up, not something else).
func (s *stats) delivery(b []byte, now int64) bool {
	i := bytes.Index(b, sbtKey)
	if i < 0 {
		return false
	}
	i += len(sbtKey)
	j := i
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == i || j-i > 19 {
		return false
	}
	sent := int64(0)
	for _, c := range b[i:j] {
		sent = sent*10 + int64(c-'0')
	}
	k := bytes.Index(b[j:], mKey)
	if k >= 0 && j+k+len(mKey) < len(b) && b[j+k+len(mKey)] == '0' {
		s.warmup.Add(1)
		return false
	}
	s.deliveries.Add(1)
	s.latency.Add((now - sent) / 1000)
	for {
		last := s.lastRecv.Load()
		if now <= last || s.lastRecv.CompareAndSwap(last, now) {
			break
		}
	}
	return true
}

// readLoop counts deliveries until the connection ends; the server closing it (or any
// read error) is recorded unless `closing` says we closed it ourselves.
func (cn *conn) readLoop(s *stats, closing *atomic.Bool) {
	var frame []byte
	for {
		var err error
		if frame, err = cn.readFrame(frame); err != nil {
			if !closing.Load() {
				s.drop(err)
			}
			return
		}
		now := time.Now().UnixNano()
		n := 0
		switch cn.proto {
		case protoNATS:
			var ping bool
			if n, ping = cn.natsDeliveries(frame, s, now); ping {
				_ = cn.ws.WriteMessage(websocket.BinaryMessage, []byte("PONG\r\n"))
			}
		case protoCentrifugo:
			for rest := frame; len(rest) > 0; {
				var line []byte
				line, rest = nextLine(rest)
				if len(line) == 2 && line[0] == '{' && line[1] == '}' { // server ping
					_ = cn.ws.WriteMessage(websocket.TextMessage, []byte("{}"))
				} else if s.delivery(line, now) {
					n++
				}
			}
		default:
			for rest := frame; len(rest) > 0; {
				var line []byte
				line, rest = nextLine(rest)
				if bytes.Contains(line, eventType) && s.delivery(line, now) {
					n++
				}
			}
		}
		if n > 0 {
			s.frames.Add(1)
		}
		if cap(frame) > 64<<10 {
			frame = nil // a burst's large frame is not kept per connection
		}
	}
}

var eventType = []byte(`"type":"event"`)

// readFrame reads the next message into buf (reused: no allocation per frame).
func (cn *conn) readFrame(buf []byte) ([]byte, error) {
	_, r, err := cn.ws.NextReader()
	if err != nil {
		return buf, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		k, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// nextLine splits off the first `\n`-terminated line.
func nextLine(b []byte) ([]byte, []byte) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}

// natsDeliveries parses the NATS protocol stream (a MSG may span frames): the measured
// MSG payloads, and whether the server sent a PING (to be answered).
func (cn *conn) natsDeliveries(data []byte, s *stats, now int64) (int, bool) {
	cn.buf = append(cn.buf, data...)
	b := cn.buf
	n := 0
	ping := false
	for {
		eol := bytes.Index(b, []byte("\r\n"))
		if eol < 0 {
			break
		}
		line := b[:eol]
		if bytes.HasPrefix(line, []byte("MSG ")) {
			f := bytes.Fields(line)
			size, err := strconv.Atoi(string(f[len(f)-1]))
			if err != nil {
				b = b[eol+2:]
				continue
			}
			end := eol + 2 + size + 2
			if len(b) < end {
				break // the payload is still on its way
			}
			if s.delivery(b[eol+2:eol+2+size], now) {
				n++
			}
			b = b[end:]
			continue
		}
		if bytes.Equal(line, []byte("PING")) {
			ping = true
		}
		b = b[eol+2:]
	}
	cn.buf = append(cn.buf[:0], b...)
	return n, ping
}
