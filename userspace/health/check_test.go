package health

import (
	"strings"
	"testing"
	"time"
)

func TestParseKind(t *testing.T) {
	valid := map[string]Kind{
		"tcp":         KindTCP,
		"http":        KindHTTP,
		"engineio":    KindEngineIO,
		"none":        KindNone,
		" EngineIO ":  KindEngineIO,
		"HTTP":        KindHTTP,
		"\tnone\n":    KindNone,
		"Tcp":         KindTCP,
		"engineio   ": KindEngineIO,
	}
	for input, want := range valid {
		got, err := ParseKind(input)
		if err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v; want %q, nil", input, got, err, want)
		}
	}
	for _, input := range []string{"", "ftp", "https", "engine.io", "socketio"} {
		_, err := ParseKind(input)
		if err == nil {
			t.Errorf("ParseKind(%q) succeeded, want an error", input)
			continue
		}
		want := `unknown health check kind "` + input + `" (expected tcp, http, engineio or none)`
		if err.Error() != want {
			t.Errorf("ParseKind(%q) error = %q, want %q", input, err, want)
		}
	}
}

func TestWithDefaults(t *testing.T) {
	tests := []struct {
		name  string
		check Check
		want  Check
	}{
		{
			name:  "zero is a tcp check",
			check: Check{},
			want:  Check{Kind: KindTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			name:  "http",
			check: Check{Kind: KindHTTP},
			want: Check{Kind: KindHTTP, Path: "/", Method: "GET", Status: 200,
				Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			name:  "engineio",
			check: Check{Kind: KindEngineIO},
			want: Check{Kind: KindEngineIO, Path: "/socket.io/",
				Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			name:  "short interval shortens the default timeout",
			check: Check{Kind: KindTCP, Interval: 500 * time.Millisecond},
			want:  Check{Kind: KindTCP, Interval: 500 * time.Millisecond, Timeout: 250 * time.Millisecond, Rise: 2, Fall: 3},
		},
		{
			name: "set fields are kept",
			check: Check{Kind: KindHTTP, Port: 8080, Path: "/healthz?full=1", Method: "HEAD", Status: 204,
				Interval: 5 * time.Second, Timeout: 3 * time.Second, Rise: 1, Fall: 7},
			want: Check{Kind: KindHTTP, Port: 8080, Path: "/healthz?full=1", Method: "HEAD", Status: 204,
				Interval: 5 * time.Second, Timeout: 3 * time.Second, Rise: 1, Fall: 7},
		},
		{
			name:  "tcp gets no http fields",
			check: Check{Kind: KindTCP, Interval: 10 * time.Second},
			want:  Check{Kind: KindTCP, Interval: 10 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got := test.check.WithDefaults()
			if got != test.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, test.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate() of defaulted check: %v", err)
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	valid := func(kind Kind) Check { return Check{Kind: kind}.WithDefaults() }
	with := func(c Check, change func(*Check)) Check {
		change(&c)
		return c
	}
	tests := []struct {
		name  string
		check Check
		want  string
	}{
		{"unknown kind", with(valid(KindTCP), func(c *Check) { c.Kind = "ftp" }),
			`unknown health check kind "ftp" (expected tcp, http, engineio or none)`},
		{"empty kind", with(valid(KindTCP), func(c *Check) { c.Kind = "" }),
			`unknown health check kind ""`},
		{"zero interval", with(valid(KindTCP), func(c *Check) { c.Interval = 0 }),
			"health check interval 0s must be positive"},
		{"negative interval", with(valid(KindTCP), func(c *Check) { c.Interval = -time.Second }),
			"health check interval -1s must be positive"},
		{"zero timeout", with(valid(KindTCP), func(c *Check) { c.Timeout = 0 }),
			"health check timeout 0s must be positive"},
		{"timeout longer than interval", with(valid(KindTCP), func(c *Check) { c.Timeout = 3 * time.Second }),
			"health check timeout 3s must be shorter than interval 2s"},
		{"timeout equal to interval", with(valid(KindTCP), func(c *Check) { c.Timeout = 2 * time.Second }),
			"health check timeout 2s must be shorter than interval 2s"},
		{"zero rise", with(valid(KindTCP), func(c *Check) { c.Rise = 0 }),
			"health check rise 0 must be between 1 and 100"},
		{"rise too large", with(valid(KindTCP), func(c *Check) { c.Rise = 101 }),
			"health check rise 101 must be between 1 and 100"},
		{"negative fall", with(valid(KindTCP), func(c *Check) { c.Fall = -2 }),
			"health check fall -2 must be between 1 and 100"},
		{"fall too large", with(valid(KindNone), func(c *Check) { c.Fall = 1000 }),
			"health check fall 1000 must be between 1 and 100"},
		{"relative http path", with(valid(KindHTTP), func(c *Check) { c.Path = "health" }),
			`health check path "health" must start with "/"`},
		{"empty engineio path", with(valid(KindEngineIO), func(c *Check) { c.Path = "" }),
			`health check path "" must start with "/"`},
		{"path with host", with(valid(KindHTTP), func(c *Check) { c.Path = "//example.com/health" }),
			`health check path "//example.com/health" must not start with "//"`},
		{"path with fragment", with(valid(KindHTTP), func(c *Check) { c.Path = "/health#top" }),
			`health check path "/health#top" must not contain a fragment`},
		{"engineio path with query", with(valid(KindEngineIO), func(c *Check) { c.Path = "/socket.io/?EIO=3" }),
			`health check path "/socket.io/?EIO=3" must not contain a query`},
		{"path with control character", with(valid(KindHTTP), func(c *Check) { c.Path = "/health\x00" }),
			`health check path "/health\x00" is not a valid URL path`},
		{"post method", with(valid(KindHTTP), func(c *Check) { c.Method = "POST" }),
			`health check method "POST" must be GET or HEAD`},
		{"lower-case method", with(valid(KindHTTP), func(c *Check) { c.Method = "get" }),
			`health check method "get" must be GET or HEAD`},
		{"status too small", with(valid(KindHTTP), func(c *Check) { c.Status = 42 }),
			"health check status 42 must be between 100 and 599"},
		{"status too large", with(valid(KindHTTP), func(c *Check) { c.Status = 600 }),
			"health check status 600 must be between 100 and 599"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			err := test.check.Validate()
			if err == nil {
				t.Fatalf("Validate(%+v) succeeded, want an error containing %q", test.check, test.want)
			}
			if !strings.Contains(err.Error(), test.want) {
				t.Errorf("Validate() error = %q, want it to contain %q", err, test.want)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	check := Check{Kind: KindHTTP, Path: "x", Method: "PUT", Status: 1, Interval: time.Second, Timeout: time.Minute}
	err := check.Validate()
	if err == nil {
		t.Fatal("Validate() succeeded, want an error")
	}
	for _, want := range []string{
		"timeout 1m0s must be shorter than interval 1s",
		"rise 0 must be between",
		"fall 0 must be between",
		`path "x" must start with "/"`,
		`method "PUT" must be GET or HEAD`,
		"status 1 must be between",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() error = %q, want it to contain %q", err, want)
		}
	}
}

func TestValidateIgnoresFieldsTheKindDoesNotUse(t *testing.T) {
	for _, kind := range []Kind{KindTCP, KindNone} {
		check := Check{Kind: kind, Path: "not a path", Method: "DELETE", Status: 9}.WithDefaults()
		if err := check.Validate(); err != nil {
			t.Errorf("Validate() of %s check with unused http fields: %v", kind, err)
		}
	}
	check := Check{Kind: KindEngineIO, Method: "DELETE", Status: 9}.WithDefaults()
	if err := check.Validate(); err != nil {
		t.Errorf("Validate() of engineio check with unused method and status: %v", err)
	}
}
