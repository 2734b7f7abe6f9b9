package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

const (
	// maxBodyBytes bounds how much of a response body a probe reads, and
	// the size of response headers.
	maxBodyBytes = 64 << 10
	// bodyExcerptBytes bounds how much of a body an error message quotes.
	bodyExcerptBytes = 100
	// userAgent identifies probes in the backends' access logs.
	userAgent = "tether-health-check"
)

// Engine.IO v4 polling protocol details used by the engineio check.
const (
	engineIOHandshakeQuery = "EIO=4&transport=polling"
	engineIOOpenPrefix     = "0{"
	engineIOClosePacket    = "1"
	engineIOContentType    = "text/plain;charset=UTF-8"
	// engineIOPacketSeparator separates packets in one polling payload.
	engineIOPacketSeparator = 0x1e
)

// probeClient is shared by all http and engineio probes. Every request uses
// a fresh connection that is closed afterwards, redirects are returned as
// they are instead of followed, and there is no Proxy: probes always go
// straight to the backend, whatever HTTP_PROXY says.
var probeClient = &http.Client{
	Transport: &http.Transport{
		DialContext:            dial,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxBodyBytes,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Probe makes one attempt to check target with c and returns nil if the
// backend is healthy. Defaults are applied to c first and it must then be
// valid. target is the backend's address and service port; a non-zero
// c.Port replaces that port. The attempt ends after c.Timeout or when ctx is
// done, whichever comes first.
func Probe(ctx context.Context, c Check, target netip.AddrPort) error {
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return fmt.Errorf("probing %s: %w", target, err)
	}
	address, err := probeAddress(c, target)
	if err != nil {
		return err
	}
	return probe(ctx, c, address)
}

// probeAddress returns the address to probe for target under c.
func probeAddress(c Check, target netip.AddrPort) (netip.AddrPort, error) {
	if !target.Addr().IsValid() {
		return netip.AddrPort{}, errors.New("health check target has no IP address")
	}
	if c.Port != 0 {
		return netip.AddrPortFrom(target.Addr(), c.Port), nil
	}
	if target.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("health check target %s has port 0 and the check sets no port", target)
	}
	return target, nil
}

// probe checks address with c, which must be valid, within c.Timeout.
func probe(ctx context.Context, c Check, address netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	switch c.Kind {
	case KindTCP:
		return probeTCP(ctx, address)
	case KindHTTP:
		return probeHTTP(ctx, c, address)
	case KindEngineIO:
		return probeEngineIO(ctx, c.Path, address)
	case KindNone:
		return nil
	}
	return unknownKindError(string(c.Kind))
}

func probeTCP(ctx context.Context, address netip.AddrPort) error {
	conn, err := dial(ctx, "tcp", address.String())
	if err != nil {
		return err
	}
	if err := conn.Close(); err != nil {
		return fmt.Errorf("closing health check connection to %s: %w", address, err)
	}
	return nil
}

func probeHTTP(ctx context.Context, c Check, address netip.AddrPort) error {
	target, err := probeURL(address, c.Path, "")
	if err != nil {
		return err
	}
	request, err := newRequest(ctx, c.Method, target, nil)
	if err != nil {
		return err
	}
	response, err := probeClient.Do(request)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	if response.StatusCode != c.Status {
		return fmt.Errorf("%s %s: status %d, expected %d", c.Method, target, response.StatusCode, c.Status)
	}
	return nil
}

// probeEngineIO opens an Engine.IO polling session at path and closes it
// again, so that probes leave no session behind on the backend.
func probeEngineIO(ctx context.Context, path string, address netip.AddrPort) error {
	handshakeURL, err := probeURL(address, path, engineIOHandshakeQuery)
	if err != nil {
		return err
	}
	sid, err := engineIOHandshake(ctx, handshakeURL)
	if err != nil {
		return fmt.Errorf("engine.io handshake: %w", err)
	}
	sessionURL := handshakeURL + "&sid=" + url.QueryEscape(sid)
	if err := engineIOClose(ctx, sessionURL); err != nil {
		return fmt.Errorf("closing engine.io session %q: %w", sid, err)
	}
	return nil
}

// engineIOHandshake opens a session and returns its id.
func engineIOHandshake(ctx context.Context, handshakeURL string) (string, error) {
	request, err := newRequest(ctx, http.MethodGet, handshakeURL, nil)
	if err != nil {
		return "", err
	}
	response, err := probeClient.Do(request)
	if err != nil {
		return "", err
	}
	defer response.Body.Close()
	body, err := readBody(response)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", handshakeURL, err)
	}
	if response.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d, expected 200, body %s", handshakeURL, response.StatusCode, excerpt(body))
	}
	openPacket, _, _ := bytes.Cut(body, []byte{engineIOPacketSeparator})
	if !bytes.HasPrefix(openPacket, []byte(engineIOOpenPrefix)) {
		return "", fmt.Errorf("GET %s: body %s does not start with an open packet %q", handshakeURL, excerpt(body), engineIOOpenPrefix)
	}
	var open struct {
		SID string `json:"sid"`
	}
	if err := json.Unmarshal(openPacket[1:], &open); err != nil {
		return "", fmt.Errorf("GET %s: decoding open packet %s: %w", handshakeURL, excerpt(openPacket), err)
	}
	if open.SID == "" {
		return "", fmt.Errorf("GET %s: open packet %s has no sid", handshakeURL, excerpt(openPacket))
	}
	return open.SID, nil
}

// engineIOClose sends the close packet to the session at sessionURL.
func engineIOClose(ctx context.Context, sessionURL string) error {
	request, err := newRequest(ctx, http.MethodPost, sessionURL, strings.NewReader(engineIOClosePacket))
	if err != nil {
		return err
	}
	request.Header.Set("Content-Type", engineIOContentType)
	response, err := probeClient.Do(request)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	body, err := readBody(response)
	if err != nil {
		return fmt.Errorf("POST %s: %w", sessionURL, err)
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: status %d, expected 200, body %s", sessionURL, response.StatusCode, excerpt(body))
	}
	return nil
}

// probeURL returns the http URL of pathAndQuery on address, with query
// appended to the query of pathAndQuery when not empty.
func probeURL(address netip.AddrPort, pathAndQuery, query string) (string, error) {
	u, err := url.Parse(pathAndQuery)
	if err != nil {
		return "", fmt.Errorf("parsing health check path %q: %w", pathAndQuery, err)
	}
	u.Scheme = "http"
	u.Host = address.String()
	if query != "" {
		if u.RawQuery != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += query
	}
	return u.String(), nil
}

// newRequest returns a probe request with ctx for method and target.
func newRequest(ctx context.Context, method, target string, body io.Reader) (*http.Request, error) {
	request, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return nil, fmt.Errorf("building health check request %s %s: %w", method, target, err)
	}
	request.Header.Set("User-Agent", userAgent)
	return request, nil
}

// readBody reads the response body, failing if it exceeds maxBodyBytes.
func readBody(response *http.Response) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(response.Body, maxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading response body: %w", err)
	}
	if len(body) > maxBodyBytes {
		return nil, fmt.Errorf("response body exceeds %d bytes", maxBodyBytes)
	}
	return body, nil
}

// excerpt quotes body for an error message, cut to bodyExcerptBytes.
func excerpt(body []byte) string {
	if len(body) <= bodyExcerptBytes {
		return fmt.Sprintf("%q", body)
	}
	return fmt.Sprintf("%q... (%d bytes)", body[:bodyExcerptBytes], len(body))
}
