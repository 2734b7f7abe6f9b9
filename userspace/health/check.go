package health

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Kind names a way of probing a backend.
type Kind string

// The kinds of health check.
const (
	// KindTCP opens a TCP connection and closes it again.
	KindTCP Kind = "tcp"
	// KindHTTP sends one HTTP request and expects a given status.
	KindHTTP Kind = "http"
	// KindEngineIO opens an Engine.IO v4 polling session and closes it.
	KindEngineIO Kind = "engineio"
	// KindNone never probes; the backend is always healthy.
	KindNone Kind = "none"
)

// kindChoices lists the valid kinds for error messages.
const kindChoices = "tcp, http, engineio or none"

// Defaults that WithDefaults fills in for fields left at their zero value.
const (
	DefaultInterval     = 2 * time.Second
	DefaultTimeout      = time.Second
	DefaultRise         = 2
	DefaultFall         = 3
	DefaultHTTPPath     = "/"
	DefaultEngineIOPath = "/socket.io/"
	DefaultMethod       = http.MethodGet
	DefaultStatus       = http.StatusOK
)

// MaxRiseFall is the largest accepted Rise and Fall.
const MaxRiseFall = 100

// ParseKind returns the Kind named by s, ignoring case and surrounding
// spaces.
func ParseKind(s string) (Kind, error) {
	kind := Kind(strings.ToLower(strings.TrimSpace(s)))
	if !kind.known() {
		return "", unknownKindError(s)
	}
	return kind, nil
}

func (k Kind) known() bool {
	switch k {
	case KindTCP, KindHTTP, KindEngineIO, KindNone:
		return true
	}
	return false
}

func unknownKindError(name string) error {
	return fmt.Errorf("unknown health check kind %q (expected %s)", name, kindChoices)
}

// Check describes how and how often to probe one backend.
//
// Path applies to the http and engineio kinds, Method and Status to http
// only; fields a kind does not use are ignored by it and by Validate.
type Check struct {
	Kind     Kind
	Port     uint16        // port to probe; 0 means the backend's service port
	Path     string        // http: path and optional query; engineio: path of the Engine.IO endpoint
	Method   string        // http: GET or HEAD
	Status   int           // http: the one status that counts as healthy
	Interval time.Duration // time between the starts of two probes
	Timeout  time.Duration // limit of one probe; shorter than Interval
	Rise     int           // consecutive successes that bring a down backend up
	Fall     int           // consecutive failures that bring an up backend down
}

// WithDefaults returns c with every zero field that has a default filled in:
// Kind tcp, Interval DefaultInterval, Rise DefaultRise, Fall DefaultFall,
// and, for the kinds that use them, Path (DefaultHTTPPath or
// DefaultEngineIOPath), Method DefaultMethod and Status DefaultStatus.
// A zero Timeout becomes DefaultTimeout, or half the interval when that is
// shorter, so that setting only a short interval still gives a valid check.
func (c Check) WithDefaults() Check {
	if c.Kind == "" {
		c.Kind = KindTCP
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
		if c.Interval > 0 {
			c.Timeout = min(c.Timeout, c.Interval/2)
		}
	}
	if c.Rise == 0 {
		c.Rise = DefaultRise
	}
	if c.Fall == 0 {
		c.Fall = DefaultFall
	}
	switch c.Kind {
	case KindHTTP:
		if c.Path == "" {
			c.Path = DefaultHTTPPath
		}
		if c.Method == "" {
			c.Method = DefaultMethod
		}
		if c.Status == 0 {
			c.Status = DefaultStatus
		}
	case KindEngineIO:
		if c.Path == "" {
			c.Path = DefaultEngineIOPath
		}
	}
	return c
}

// Validate reports every problem of c, each naming the bad value and what is
// expected; nil means c can be probed. It does not fill in defaults: call it
// on the result of WithDefaults.
func (c Check) Validate() error {
	var problems []error
	if !c.Kind.known() {
		problems = append(problems, unknownKindError(string(c.Kind)))
	}
	if c.Interval <= 0 {
		problems = append(problems, fmt.Errorf("health check interval %s must be positive", c.Interval))
	}
	if c.Timeout <= 0 {
		problems = append(problems, fmt.Errorf("health check timeout %s must be positive", c.Timeout))
	} else if c.Interval > 0 && c.Timeout >= c.Interval {
		problems = append(problems, fmt.Errorf("health check timeout %s must be shorter than interval %s", c.Timeout, c.Interval))
	}
	if c.Rise < 1 || c.Rise > MaxRiseFall {
		problems = append(problems, fmt.Errorf("health check rise %d must be between 1 and %d", c.Rise, MaxRiseFall))
	}
	if c.Fall < 1 || c.Fall > MaxRiseFall {
		problems = append(problems, fmt.Errorf("health check fall %d must be between 1 and %d", c.Fall, MaxRiseFall))
	}
	if c.Kind == KindHTTP || c.Kind == KindEngineIO {
		if err := validatePath(c.Kind, c.Path); err != nil {
			problems = append(problems, err)
		}
	}
	if c.Kind == KindHTTP {
		if c.Method != http.MethodGet && c.Method != http.MethodHead {
			problems = append(problems, fmt.Errorf("health check method %q must be GET or HEAD", c.Method))
		}
		if c.Status < 100 || c.Status > 599 {
			problems = append(problems, fmt.Errorf("health check status %d must be between 100 and 599", c.Status))
		}
	}
	return errors.Join(problems...)
}

func validatePath(kind Kind, path string) error {
	switch {
	case !strings.HasPrefix(path, "/"):
		return fmt.Errorf("health check path %q must start with \"/\"", path)
	case strings.HasPrefix(path, "//"):
		return fmt.Errorf("health check path %q must not start with \"//\"", path)
	case strings.Contains(path, "#"):
		return fmt.Errorf("health check path %q must not contain a fragment (\"#\")", path)
	case kind == KindEngineIO && strings.Contains(path, "?"):
		return fmt.Errorf("health check path %q must not contain a query (\"?\"): the engineio check sets its own", path)
	}
	if _, err := url.Parse(path); err != nil {
		return fmt.Errorf("health check path %q is not a valid URL path: %w", path, err)
	}
	return nil
}
