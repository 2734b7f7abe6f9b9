package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
)

// Client calls the daemon's control API.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening at socket.
func NewClient(socket string) *Client {
	return &Client{
		socket: socket,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		}},
	}
}

func (c *Client) call(ctx context.Context, method, path string, body, reply any) error {
	var in io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding request: %w", err)
		}
		in = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tether"+path, in)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("the tether daemon is not running (no control socket at %s; start it with tether run)", c.socket)
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("no permission to use the control socket %s: run as root", c.socket)
		}
		return fmt.Errorf("calling the tether daemon at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading the daemon's reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorReply
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("the daemon answered %s", resp.Status)
	}
	if reply == nil {
		return nil
	}
	if err := json.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("decoding the daemon's reply: %w", err)
	}
	return nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.call(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// AddVIP adds a VIP.
func (c *Client) AddVIP(ctx context.Context, v VIP) (Reply, error) {
	var r Reply
	return r, c.call(ctx, http.MethodPost, "/v1/vips", v, &r)
}

// RemoveVIP removes a VIP.
func (c *Client) RemoveVIP(ctx context.Context, ref VIPRef) error {
	return c.call(ctx, http.MethodDelete, "/v1/vips", ref, nil)
}

// AddBackend adds a backend to a VIP.
func (c *Client) AddBackend(ctx context.Context, ref VIPRef, b Backend) (Reply, error) {
	var r Reply
	return r, c.call(ctx, http.MethodPost, "/v1/backends", BackendRequest{VIP: ref, Backend: b}, &r)
}

// RemoveBackend removes a backend from a VIP.
func (c *Client) RemoveBackend(ctx context.Context, ref VIPRef, name string) error {
	return c.call(ctx, http.MethodDelete, "/v1/backends", BackendRequest{VIP: ref, Backend: Backend{Name: name}}, nil)
}

// SetWeight changes a backend's weight.
func (c *Client) SetWeight(ctx context.Context, ref VIPRef, name string, weight uint32) error {
	return c.call(ctx, http.MethodPost, "/v1/backends/weight", BackendRequest{VIP: ref, Backend: Backend{Name: name, Weight: weight}}, nil)
}

// Drain drains a backend.
func (c *Client) Drain(ctx context.Context, ref VIPRef, name string) error {
	return c.call(ctx, http.MethodPost, "/v1/backends/drain", BackendRequest{VIP: ref, Backend: Backend{Name: name}}, nil)
}

// Enable undoes a drain.
func (c *Client) Enable(ctx context.Context, ref VIPRef, name string) error {
	return c.call(ctx, http.MethodPost, "/v1/backends/enable", BackendRequest{VIP: ref, Backend: Backend{Name: name}}, nil)
}

// PinnedClients counts the clients still pinned to a backend.
func (c *Client) PinnedClients(ctx context.Context, ref VIPRef, name string) (int, error) {
	var r PinnedReply
	return r.Pinned, c.call(ctx, http.MethodPost, "/v1/backends/pinned", BackendRequest{VIP: ref, Backend: Backend{Name: name}}, &r)
}

// Stats returns the datapath's counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	return s, c.call(ctx, http.MethodGet, "/v1/stats", nil, &s)
}
