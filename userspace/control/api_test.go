package control

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// apiBed serves a test bed's daemon on a unix socket.
type apiBed struct {
	tb     *testBed
	socket string
	client *http.Client
}

func newAPIBed(t *testing.T) *apiBed {
	t.Helper()
	tb := newTestBed(t, testLimits, "")
	socket, client := serveAPI(t, tb.daemon)
	return &apiBed{tb: tb, socket: socket, client: client}
}

// serveAPI serves d's control API on a socket in a temporary directory
// until the test ends, and returns the socket and a client of it.
func serveAPI(t testing.TB, d *Daemon) (string, *http.Client) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "tether.sock")
	ln, err := Listen(socket, os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- NewServer(d, slog.New(slog.DiscardHandler), os.Getgid()).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serving the control API: %v", err)
		}
	})
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, "unix", socket)
	}}}
	return socket, client
}

func (b *apiBed) post(t *testing.T, path, body string) (int, string) {
	t.Helper()
	resp, err := b.client.Post("http://tether"+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(reply)
}

// TestAPIAppliesTheCLIsDefaults: a VIP or backend the API adds gets the
// defaults the CLI gives for what the request leaves out, and the API's
// source whatever the request claims; anything after the JSON is refused.
func TestAPIAppliesTheCLIsDefaults(t *testing.T) {
	b := newAPIBed(t)
	if code, reply := b.post(t, "/v1/vips", `{"addr":"198.18.1.1:80","proto":"tcp","source":"config"}`); code != http.StatusOK {
		t.Fatalf("adding a VIP without prefixes: %d %s", code, reply)
	}
	if code, reply := b.post(t, "/v1/backends", `{"vip":{"addr":"198.18.1.1:80","proto":"tcp"},"backend":{"name":"b1","addr":"198.18.0.10","source":"config"}}`); code != http.StatusOK {
		t.Fatalf("adding a backend without a weight: %d %s", code, reply)
	}
	v := b.tb.vipStatus(mustRef(t, "198.18.1.1:80", "tcp"))
	if v.Prefix4 != DefaultPrefix4 || v.Prefix6 != DefaultPrefix6 || v.Source != SourceCLI {
		t.Fatalf("the API's VIP has prefixes /%d and /%d from %q, want /%d, /%d from %q", v.Prefix4, v.Prefix6, v.Source, DefaultPrefix4, DefaultPrefix6, SourceCLI)
	}
	if be := v.Backends[0]; be.Weight != DefaultWeight || be.Source != SourceCLI {
		t.Fatalf("the API's backend has weight %d from %q, want %d from %q", be.Weight, be.Source, DefaultWeight, SourceCLI)
	}
	before := b.tb.snapshot()
	for _, body := range []string{
		`{"addr":"198.18.1.2:80","proto":"tcp"} {"addr":"198.18.1.3:80","proto":"tcp"}`,
		`{"addr":"198.18.1.2:80","proto":"tcp"}garbage`,
	} {
		if code, reply := b.post(t, "/v1/vips", body); code != http.StatusBadRequest || !strings.Contains(reply, "data after the JSON object") {
			t.Fatalf("a body with data after the JSON: %d %s, want 400", code, reply)
		}
	}
	b.tb.assertUnchanged(before)
}

// TestAPIDropsSlowClients: a request whose body does not arrive within the
// read timeout is cut off, so a slow client cannot hold the socket.
func TestAPIDropsSlowClients(t *testing.T) {
	saved := apiReadTimeout
	apiReadTimeout = 300 * time.Millisecond
	t.Cleanup(func() { apiReadTimeout = saved })
	b := newAPIBed(t)
	conn, err := net.Dial("unix", b.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/vips HTTP/1.1\r\nHost: tether\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	reply, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading from a connection with a stalled body: %v", err)
	}
	if waited := time.Since(start); waited > 4*time.Second {
		t.Fatalf("the server held a stalled request for %s", waited)
	}
	if bytes.Contains(reply, []byte("200 OK")) {
		t.Fatalf("a stalled request was served: %s", reply)
	}
}

// TestAPICapsConnections: past maxAPIConnections open connections, a new
// one waits for a slot; closing one lets it in, and the server still stops
// at once with every slot taken.
func TestAPICapsConnections(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "cap.sock"))
	if err != nil {
		t.Fatal(err)
	}
	limited := newLimitListener(ln, 2)
	accepted := make(chan net.Conn, 3)
	go func() {
		for {
			c, err := limited.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	for range 3 {
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first := <-accepted
	second := <-accepted
	defer second.Close()
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted with two slots")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	select {
	case c := <-accepted:
		defer c.Close() // both slots stay taken: the next Accept waits
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot did not let the waiting connection in")
	}
	time.Sleep(100 * time.Millisecond)
	limited.Close()
	select {
	case _, open := <-accepted:
		for open {
			_, open = <-accepted
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept went on waiting for a slot after Close")
	}
}
