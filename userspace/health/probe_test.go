package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// listenLoopback listens on an unused port of the loopback address of
// network ("tcp4" or "tcp6"), skipping the test if there is none, and
// closes the listener at cleanup.
func listenLoopback(t testing.TB, network string) net.Listener {
	t.Helper()
	address := "127.0.0.1:0"
	if network == "tcp6" {
		address = "[::1]:0"
	}
	listener, err := net.Listen(network, address)
	if err != nil {
		if network == "tcp6" {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		t.Fatalf("listening on %s: %v", address, err)
	}
	t.Cleanup(func() { listener.Close() })
	return listener
}

func addressOf(t testing.TB, listener net.Listener) netip.AddrPort {
	t.Helper()
	address, err := netip.ParseAddrPort(listener.Addr().String())
	if err != nil {
		t.Fatalf("parsing listener address %s: %v", listener.Addr(), err)
	}
	return address
}

// tcpBackend returns the address of a loopback TCP server that accepts
// connections and closes them at once, and a counter of accepted
// connections.
func tcpBackend(t testing.TB, network string) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	listener := listenLoopback(t, network)
	var accepted atomic.Int64
	var acceptLoop sync.WaitGroup
	acceptLoop.Go(func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conn.Close()
		}
	})
	t.Cleanup(func() {
		listener.Close()
		acceptLoop.Wait()
	})
	return addressOf(t, listener), &accepted
}

// closedPort returns a loopback address on which nothing listens.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	listener, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening on 127.0.0.1: %v", err)
	}
	address := addressOf(t, listener)
	if err := listener.Close(); err != nil {
		t.Fatalf("closing listener: %v", err)
	}
	return address
}

// httpBackend serves handler on a loopback address and returns the server.
func httpBackend(t testing.TB, network string, handler http.Handler) *httptest.Server {
	t.Helper()
	server := httptest.NewUnstartedServer(handler)
	server.Listener.Close()
	server.Listener = listenLoopback(t, network)
	server.Start()
	t.Cleanup(server.Close)
	return server
}

func serverAddress(t testing.TB, server *httptest.Server) netip.AddrPort {
	t.Helper()
	return addressOf(t, server.Listener)
}

func tcpCheck() Check {
	return Check{Kind: KindTCP, Interval: 2 * time.Second, Timeout: time.Second}
}

func TestProbeTCP(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			target, accepted := tcpBackend(t, network)
			for range 3 {
				if err := Probe(t.Context(), tcpCheck(), target); err != nil {
					t.Fatalf("Probe(%s): %v", target, err)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for accepted.Load() < 3 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if got := accepted.Load(); got != 3 {
				t.Errorf("server accepted %d connections, want 3", got)
			}
		})
	}
}

func TestProbeTCPRefused(t *testing.T) {
	target := closedPort(t)
	err := Probe(t.Context(), tcpCheck(), target)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Probe(%s) = %v, want connection refused", target, err)
	}
	if !strings.Contains(err.Error(), target.String()) {
		t.Errorf("error %q does not name the target %s", err, target)
	}
}

func TestProbePortOverride(t *testing.T) {
	live, _ := tcpBackend(t, "tcp4")
	closed := closedPort(t)

	check := tcpCheck()
	check.Port = live.Port()
	if err := Probe(t.Context(), check, closed); err != nil {
		t.Errorf("Probe(%s) with Port %d: %v, want success on the override port", closed, check.Port, err)
	}
	check.Port = closed.Port()
	if err := Probe(t.Context(), check, live); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Probe(%s) with Port %d = %v, want connection refused on the override port", live, check.Port, err)
	}
}

func TestProbeNone(t *testing.T) {
	if err := Probe(t.Context(), Check{Kind: KindNone}, closedPort(t)); err != nil {
		t.Errorf("Probe with kind none: %v, want nil", err)
	}
}

func TestProbeRejectsBadInput(t *testing.T) {
	live, _ := tcpBackend(t, "tcp4")
	tests := []struct {
		name   string
		check  Check
		target netip.AddrPort
		want   string
	}{
		{"invalid check", Check{Kind: "ftp"}, live, `unknown health check kind "ftp"`},
		{"no address", tcpCheck(), netip.AddrPort{}, "has no IP address"},
		{"no port", tcpCheck(), netip.AddrPortFrom(live.Addr(), 0), "has port 0 and the check sets no port"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			err := Probe(t.Context(), test.check, test.target)
			if err == nil || !strings.Contains(err.Error(), test.want) {
				t.Errorf("Probe() = %v, want an error containing %q", err, test.want)
			}
		})
	}
}

func TestProbeHonoursCanceledContext(t *testing.T) {
	target, _ := tcpBackend(t, "tcp4")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Probe(ctx, tcpCheck(), target); !errors.Is(err, context.Canceled) {
		t.Errorf("Probe with a canceled context = %v, want context.Canceled", err)
	}
}

func httpCheck(path string) Check {
	return Check{Kind: KindHTTP, Path: path, Interval: 2 * time.Second, Timeout: time.Second}
}

func TestProbeHTTP(t *testing.T) {
	type request struct{ method, uri, userAgent string }
	var (
		mu       sync.Mutex
		requests []request
	)
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, request{r.Method, r.RequestURI, r.UserAgent()})
		mu.Unlock()
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/health", http.StatusFound)
	})

	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			server := httpBackend(t, network, mux)
			target := serverAddress(t, server)
			base := "http://" + target.String()

			if err := Probe(t.Context(), httpCheck("/health"), target); err != nil {
				t.Errorf("GET /health: %v", err)
			}

			head := httpCheck("/health?verbose=1")
			head.Method = http.MethodHead
			if err := Probe(t.Context(), head, target); err != nil {
				t.Errorf("HEAD /health?verbose=1: %v", err)
			}

			err := Probe(t.Context(), httpCheck("/broken"), target)
			want := "GET " + base + "/broken: status 503, expected 200"
			if err == nil || err.Error() != want {
				t.Errorf("GET /broken = %v, want %q", err, want)
			}

			created := httpCheck("/created")
			created.Status = http.StatusCreated
			if err := Probe(t.Context(), created, target); err != nil {
				t.Errorf("GET /created expecting 201: %v", err)
			}

			err = Probe(t.Context(), httpCheck("/moved"), target)
			want = "GET " + base + "/moved: status 302, expected 200"
			if err == nil || err.Error() != want {
				t.Errorf("GET /moved = %v, want %q (redirects are not followed)", err, want)
			}

			mu.Lock()
			defer mu.Unlock()
			wantRequests := []request{
				{"GET", "/health", userAgent},
				{"HEAD", "/health?verbose=1", userAgent},
			}
			if fmt.Sprint(requests) != fmt.Sprint(wantRequests) {
				t.Errorf("/health saw requests %v, want %v", requests, wantRequests)
			}
			requests = nil
		})
	}
}

func TestProbeHTTPUsesAFreshConnectionEachTime(t *testing.T) {
	var connections atomic.Int64
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	server.Listener.Close()
	server.Listener = listenLoopback(t, "tcp4")
	server.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			connections.Add(1)
		}
	}
	server.Start()
	t.Cleanup(server.Close)

	const probes = 5
	for range probes {
		if err := Probe(t.Context(), httpCheck("/"), serverAddress(t, server)); err != nil {
			t.Fatalf("Probe: %v", err)
		}
	}
	if got := connections.Load(); got != probes {
		t.Errorf("%d probes used %d connections, want one each", probes, got)
	}
}

func TestProbeClientConfiguration(t *testing.T) {
	transport, ok := probeClient.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("probe client transport is %T, want *http.Transport", probeClient.Transport)
	}
	if transport.Proxy != nil {
		t.Error("probe client transport has a Proxy function; probes must go straight to the backend")
	}
	if !transport.DisableKeepAlives {
		t.Error("probe client transport keeps connections alive between probes")
	}
}

func TestProbeHTTPTimeout(t *testing.T) {
	release := make(chan struct{})
	server := httpBackend(t, "tcp4", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) })

	check := httpCheck("/")
	check.Timeout = 200 * time.Millisecond
	started := time.Now()
	err := Probe(t.Context(), check, serverAddress(t, server))
	elapsed := time.Since(started)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Probe of a hanging server = %v, want a deadline error", err)
	}
	if elapsed < check.Timeout || elapsed > check.Timeout+time.Second {
		t.Errorf("Probe of a hanging server took %s, want about %s", elapsed, check.Timeout)
	}
}

// fakeEngineIO is a minimal Engine.IO v4 polling endpoint at /socket.io/
// that keeps track of open sessions. The fields set before use make it
// misbehave in one way each.
type fakeEngineIO struct {
	handshakeStatus int    // if set, the handshake fails with this status
	handshakeBody   string // if set, returned by the handshake instead of an open packet
	refuseClose     bool   // the close packet is answered as for an unknown session

	mu         sync.Mutex
	sessions   map[string]bool
	handshakes int
}

const engineIOUnknownSession = `{"code":1,"message":"Session ID unknown"}`

func (f *fakeEngineIO) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	if r.URL.Path != "/socket.io/" || query.Get("EIO") != "4" || query.Get("transport") != "polling" {
		http.Error(w, `{"code":0,"message":"Transport unknown"}`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	sid := query.Get("sid")
	switch {
	case r.Method == http.MethodGet && sid == "":
		f.handshake(w)
	case r.Method == http.MethodPost && sid != "":
		f.receive(w, r, sid)
	default:
		http.Error(w, `{"code":3,"message":"Bad request"}`, http.StatusBadRequest)
	}
}

func (f *fakeEngineIO) handshake(w http.ResponseWriter) {
	f.handshakes++
	switch {
	case f.handshakeStatus != 0:
		http.Error(w, f.handshakeBody, f.handshakeStatus)
	case f.handshakeBody != "":
		io.WriteString(w, f.handshakeBody)
	default:
		sid := fmt.Sprintf("sid-%d", f.handshakes)
		if f.sessions == nil {
			f.sessions = make(map[string]bool)
		}
		f.sessions[sid] = true
		fmt.Fprintf(w, `0{"sid":%q,"upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`, sid)
	}
}

func (f *fakeEngineIO) receive(w http.ResponseWriter, r *http.Request, sid string) {
	body, err := io.ReadAll(r.Body)
	if err != nil || r.Header.Get("Content-Type") != "text/plain;charset=UTF-8" || string(body) != "1" {
		http.Error(w, `{"code":3,"message":"Bad request"}`, http.StatusBadRequest)
		return
	}
	if f.refuseClose || !f.sessions[sid] {
		http.Error(w, engineIOUnknownSession, http.StatusBadRequest)
		return
	}
	delete(f.sessions, sid)
	io.WriteString(w, "ok")
}

func (f *fakeEngineIO) counts() (handshakes, open int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handshakes, len(f.sessions)
}

func engineIOCheck() Check {
	return Check{Kind: KindEngineIO, Interval: 2 * time.Second, Timeout: time.Second}
}

func TestProbeEngineIOLeavesNoSession(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			fake := &fakeEngineIO{}
			target := serverAddress(t, httpBackend(t, network, fake))
			const probes = 100
			for i := range probes {
				if err := Probe(t.Context(), engineIOCheck(), target); err != nil {
					t.Fatalf("probe %d: %v", i, err)
				}
			}
			handshakes, open := fake.counts()
			if handshakes != probes || open != 0 {
				t.Errorf("after %d probes: %d handshakes and %d open sessions, want %d and 0", probes, handshakes, open, probes)
			}
		})
	}
}

func TestProbeEngineIOCustomPath(t *testing.T) {
	fake := &fakeEngineIO{}
	mux := http.NewServeMux()
	mux.Handle("/chat/socket.io/", http.StripPrefix("/chat", fake))
	target := serverAddress(t, httpBackend(t, "tcp4", mux))

	check := engineIOCheck()
	check.Path = "/chat/socket.io/"
	if err := Probe(t.Context(), check, target); err != nil {
		t.Fatalf("Probe at %s: %v", check.Path, err)
	}
	if err := Probe(t.Context(), engineIOCheck(), target); err == nil || !strings.Contains(err.Error(), "status 404") {
		t.Errorf("Probe at the default path = %v, want status 404", err)
	}
	if handshakes, open := fake.counts(); handshakes != 1 || open != 0 {
		t.Errorf("%d handshakes and %d open sessions, want 1 and 0", handshakes, open)
	}
}

func TestProbeEngineIOAcceptsPayloadWithSeveralPackets(t *testing.T) {
	fake := &fakeEngineIO{handshakeBody: `0{"sid":"several","upgrades":["websocket"]}` + "\x1e" + `40{"sid":"x"}`}
	target := serverAddress(t, httpBackend(t, "tcp4", fake))
	err := Probe(t.Context(), engineIOCheck(), target)
	// The fake does not know this sid, so only closing can fail, which
	// shows the handshake was accepted.
	if err == nil || !strings.Contains(err.Error(), `closing engine.io session "several"`) {
		t.Errorf("Probe = %v, want the handshake to succeed with sid \"several\"", err)
	}
}

func TestProbeEngineIOFailures(t *testing.T) {
	longBody := strings.Repeat("x", 10000)
	tests := []struct {
		name      string
		fake      *fakeEngineIO
		want      []string
		maxLength int
	}{
		{
			name: "handshake status",
			fake: &fakeEngineIO{handshakeStatus: http.StatusInternalServerError, handshakeBody: "boom"},
			want: []string{"engine.io handshake: GET http://", "/socket.io/?EIO=4&transport=polling: status 500, expected 200", `"boom\n"`},
		},
		{
			name: "not an open packet",
			fake: &fakeEngineIO{handshakeBody: "4hello"},
			want: []string{`body "4hello" does not start with an open packet "0{"`},
		},
		{
			name: "html page",
			fake: &fakeEngineIO{handshakeBody: "<html>hello</html>"},
			want: []string{`body "<html>hello</html>" does not start with an open packet`},
		},
		{
			name: "missing sid",
			fake: &fakeEngineIO{handshakeBody: `0{"upgrades":[],"pingInterval":25000}`},
			want: []string{`open packet "0{\"upgrades\":[],\"pingInterval\":25000}" has no sid`},
		},
		{
			name: "empty sid",
			fake: &fakeEngineIO{handshakeBody: `0{"sid":""}`},
			want: []string{"has no sid"},
		},
		{
			name: "sid not a string",
			fake: &fakeEngineIO{handshakeBody: `0{"sid":42}`},
			want: []string{`decoding open packet "0{\"sid\":42}"`, "cannot unmarshal number"},
		},
		{
			name: "broken json",
			fake: &fakeEngineIO{handshakeBody: `0{"sid":"abc"`},
			want: []string{"decoding open packet"},
		},
		{
			name: "close refused",
			fake: &fakeEngineIO{refuseClose: true},
			want: []string{`closing engine.io session "sid-1": POST http://`, "/socket.io/?EIO=4&transport=polling&sid=sid-1: status 400, expected 200", "Session ID unknown"},
		},
		{
			name:      "long body is cut in the message",
			fake:      &fakeEngineIO{handshakeStatus: http.StatusBadGateway, handshakeBody: longBody},
			want:      []string{"status 502", `"` + strings.Repeat("x", 100) + `"... (10001 bytes)`},
			maxLength: 400,
		},
		{
			name: "body too large",
			fake: &fakeEngineIO{handshakeBody: "0" + strings.Repeat(" ", 70000)},
			want: []string{"response body exceeds 65536 bytes"},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			target := serverAddress(t, httpBackend(t, "tcp4", test.fake))
			err := Probe(t.Context(), engineIOCheck(), target)
			if err == nil {
				t.Fatal("Probe succeeded, want an error")
			}
			for _, want := range test.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if test.maxLength > 0 && len(err.Error()) > test.maxLength {
				t.Errorf("error is %d bytes long, want at most %d: %q", len(err.Error()), test.maxLength, err)
			}
		})
	}
}

func TestProbeEngineIORefused(t *testing.T) {
	target := closedPort(t)
	err := Probe(t.Context(), engineIOCheck(), target)
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.HasPrefix(err.Error(), "engine.io handshake: ") {
		t.Errorf("Probe(%s) = %v, want an engine.io handshake error with connection refused", target, err)
	}
}
