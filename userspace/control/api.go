package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the daemon listens for the CLI.
const DefaultSocket = "/run/tether/tether.sock"

// Request bodies of the control API.
type (
	// BackendRequest names a backend of a VIP, for add (with all fields),
	// remove, weight, drain, enable and pinned-count calls.
	BackendRequest struct {
		VIP     VIPRef  `json:"vip"`
		Backend Backend `json:"backend"`
	}
	// Reply is the body of every successful call that changes something.
	Reply struct {
		Warnings []string `json:"warnings,omitempty"`
	}
	// PinnedReply is the number of clients pinned to a backend.
	PinnedReply struct {
		Pinned int `json:"pinned"`
	}
	errorReply struct {
		Error string `json:"error"`
	}
)

type peerKey struct{}

// Server serves the control API on a unix socket.
type Server struct {
	daemon   *Daemon
	log      *slog.Logger
	allowGID int // -1: root only
}

// NewServer returns the API of d. Peers must be root, or in group allowGID
// when it is not -1.
func NewServer(d *Daemon, log *slog.Logger, allowGID int) *Server {
	return &Server{daemon: d, log: log, allowGID: allowGID}
}

// Listen creates the control socket at path: mode 0600, or 0660 for the
// group allowGID (-1 for none). It refuses a socket another daemon serves.
func Listen(path string, allowGID int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating control socket directory: %w", err)
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("another tether daemon serves the control socket %s: stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing old control socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on control socket: %w", err)
	}
	mode := os.FileMode(0o600)
	if allowGID >= 0 {
		mode = 0o660
		if err := os.Chown(path, -1, allowGID); err != nil {
			ln.Close()
			return nil, fmt.Errorf("giving group %d the control socket: %w", allowGID, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting control socket: %w", err)
	}
	return ln, nil
}

// Serve answers API calls on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/vips", s.addVIP)
	mux.HandleFunc("DELETE /v1/vips", s.removeVIP)
	mux.HandleFunc("POST /v1/backends", s.addBackend)
	mux.HandleFunc("DELETE /v1/backends", s.backendCall(func(ctx context.Context, r BackendRequest) error {
		return s.daemon.RemoveBackend(ctx, r.VIP, r.Backend.Name)
	}))
	mux.HandleFunc("POST /v1/backends/weight", s.backendCall(func(ctx context.Context, r BackendRequest) error {
		return s.daemon.SetWeight(ctx, r.VIP, r.Backend.Name, r.Backend.Weight)
	}))
	mux.HandleFunc("POST /v1/backends/drain", s.backendCall(func(ctx context.Context, r BackendRequest) error {
		return s.daemon.Drain(ctx, r.VIP, r.Backend.Name)
	}))
	mux.HandleFunc("POST /v1/backends/enable", s.backendCall(func(ctx context.Context, r BackendRequest) error {
		return s.daemon.Enable(ctx, r.VIP, r.Backend.Name)
	}))
	mux.HandleFunc("POST /v1/backends/pinned", s.pinned)
	mux.HandleFunc("GET /v1/stats", s.stats)
	server := &http.Server{
		Handler:           s.authorize(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       apiReadTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerCredentials(c))
		},
	}
	// One request per connection: an idle keep-alive connection must not
	// hold one of the few slots.
	server.SetKeepAlivesEnabled(false)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	if err := server.Serve(newLimitListener(ln, maxAPIConnections)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving control API: %w", err)
	}
	return nil
}

// apiReadTimeout bounds how long a request, body included, may take to
// arrive: a client that sends slowly cannot hold a connection for ever.
var apiReadTimeout = 10 * time.Second

// maxAPIConnections is how many control connections are served at once;
// more wait to be accepted.
const maxAPIConnections = 64

// limitListener accepts a connection only while fewer than cap(slots) are
// open. Closing it ends an Accept that waits for a slot.
type limitListener struct {
	net.Listener
	slots  chan struct{}
	closed chan struct{}
	once   *sync.Once
}

func newLimitListener(ln net.Listener, n int) limitListener {
	return limitListener{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{}), once: &sync.Once{}}
}

func (l limitListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func (l limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &slotConn{Conn: c, release: func() { <-l.slots }}, nil
}

// slotConn gives its slot back once, when closed.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// peerCredentials reads the connecting process's uid and gid.
func peerCredentials(c net.Conn) *unix.Ucred {
	if sc, ok := c.(*slotConn); ok {
		c = sc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return cred
}

func (s *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, _ := r.Context().Value(peerKey{}).(*unix.Ucred)
		if cred == nil || !s.allowed(cred) {
			message := "permission denied: the control socket accepts root only (see tether run --socket-group)"
			if s.allowGID >= 0 {
				message = fmt.Sprintf("permission denied: the control socket accepts root and members of group %d only", s.allowGID)
			}
			writeError(w, http.StatusForbidden, errors.New(message))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allowed reports whether the peer is root or in the allowed group, as its
// primary or a supplementary group.
func (s *Server) allowed(cred *unix.Ucred) bool {
	if cred.Uid == 0 {
		return true
	}
	if s.allowGID < 0 {
		return false
	}
	if int(cred.Gid) == s.allowGID {
		return true
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cred.Pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if groups, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, g := range strings.Fields(groups) {
				if g == strconv.Itoa(s.allowGID) {
					return true
				}
			}
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, errorReply{Error: err.Error()})
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrConflict):
		status = http.StatusConflict
	default:
		s.log.Error("control API call failed", "error", err)
	}
	writeError(w, status, err)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid(fmt.Errorf("request body: %w", err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid(errors.New("request body: data after the JSON object, expected one object"))
	}
	return nil
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	st, err := s.daemon.Status()
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) addVIP(w http.ResponseWriter, r *http.Request) {
	// Fields the request leaves out get the defaults the CLI and the
	// config file give; the source is always the API's.
	v := NewVIP(VIPRef{})
	if err := decode(r, &v); err != nil {
		s.fail(w, err)
		return
	}
	v.Source = SourceCLI
	for i := range v.Backends {
		v.Backends[i].Source = SourceCLI
	}
	if err := s.daemon.AddVIP(r.Context(), v); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, Reply{Warnings: s.daemon.Problems(v.VIPRef, "")})
}

func (s *Server) removeVIP(w http.ResponseWriter, r *http.Request) {
	var ref VIPRef
	if err := decode(r, &ref); err != nil {
		s.fail(w, err)
		return
	}
	if err := s.daemon.RemoveVIP(r.Context(), ref); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, Reply{})
}

func (s *Server) addBackend(w http.ResponseWriter, r *http.Request) {
	req := BackendRequest{Backend: Backend{Weight: DefaultWeight}}
	if err := decode(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	req.Backend.Source = SourceCLI
	if err := s.daemon.AddBackend(r.Context(), req.VIP, req.Backend); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, Reply{Warnings: s.daemon.Problems(req.VIP, req.Backend.Name)})
}

func (s *Server) backendCall(call func(context.Context, BackendRequest) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req BackendRequest
		if err := decode(r, &req); err != nil {
			s.fail(w, err)
			return
		}
		if err := call(r.Context(), req); err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, Reply{})
	}
}

func (s *Server) pinned(w http.ResponseWriter, r *http.Request) {
	var req BackendRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	n, err := s.daemon.PinnedClients(req.VIP, req.Backend.Name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, PinnedReply{Pinned: n})
}

func (s *Server) stats(w http.ResponseWriter, _ *http.Request) {
	st, err := s.daemon.Stats()
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
