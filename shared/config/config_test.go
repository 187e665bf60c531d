package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// env returns a getenv reading from m.
func env(m map[string]string) func(string) string {
	return func(name string) string { return m[name] }
}

// checkNoErr fails the test if r collected a problem.
func checkNoErr(t *testing.T, r *Reader) {
	t.Helper()
	if err := r.Err(); err != nil {
		t.Errorf("Err(): got %v, want nil", err)
	}
}

// checkErr fails the test unless r collected problems mentioning every one of want.
func checkErr(t *testing.T, r *Reader, want ...string) {
	t.Helper()
	err := r.Err()
	if err == nil {
		t.Fatalf("Err(): got nil, want an error mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Err(): got %q, want it to mention %q", err, w)
		}
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		name  string
		value string
		set   bool
		want  string
	}{
		{"unset", "", false, "def"},
		{"empty", "", true, "def"},
		{"blank", "  \t", true, "def"},
		{"value", "x", true, "x"},
		{"trimmed", "  spaced value \n", true, "spaced value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{}
			if tt.set {
				m["V"] = tt.value
			}
			r := NewReader(env(m))
			if got := r.String("V", "def"); got != tt.want {
				t.Errorf("String: got %q, want %q", got, tt.want)
			}
			checkNoErr(t, r)
		})
	}
}

func TestInt(t *testing.T) {
	tests := []struct {
		value   string
		want    int
		wantErr bool
	}{
		{"", 7, false},
		{"42", 42, false},
		{" 42 ", 42, false},
		{"-3", -3, false},
		{"0", 0, false},
		{"4.5", 7, true},
		{"12abc", 7, true},
		{"0x10", 7, true},
		{"99999999999999999999", 7, true},
		{"seven", 7, true},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			r := NewReader(env(map[string]string{"N": tt.value}))
			if got := r.Int("N", 7); got != tt.want {
				t.Errorf("Int(N=%q): got %d, want %d", tt.value, got, tt.want)
			}
			if tt.wantErr {
				checkErr(t, r, "N=", tt.value, "not an integer")
			} else {
				checkNoErr(t, r)
			}
		})
	}
}

func TestFloat(t *testing.T) {
	tests := []struct {
		value   string
		want    float64
		wantErr bool
	}{
		{"", 0.5, false},
		{"1.25", 1.25, false},
		{"-2", -2, false},
		{"1e3", 1000, false},
		{" 3.5 ", 3.5, false},
		{"1,5", 0.5, true},
		{"half", 0.5, true},
		{"1.2.3", 0.5, true},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			r := NewReader(env(map[string]string{"F": tt.value}))
			if got := r.Float("F", 0.5); got != tt.want {
				t.Errorf("Float(F=%q): got %v, want %v", tt.value, got, tt.want)
			}
			if tt.wantErr {
				checkErr(t, r, "F=", tt.value, "not a number")
			} else {
				checkNoErr(t, r)
			}
		})
	}
}

func TestBool(t *testing.T) {
	tests := []struct {
		value   string
		def     bool
		want    bool
		wantErr bool
	}{
		{"", true, true, false},
		{"", false, false, false},
		{"true", false, true, false},
		{"TRUE", false, true, false},
		{"1", false, true, false},
		{"false", true, false, false},
		{"0", true, false, false},
		{"F", true, false, false},
		{"yes", true, true, true},
		{"on", false, false, true},
		{"2", false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			r := NewReader(env(map[string]string{"B": tt.value}))
			if got := r.Bool("B", tt.def); got != tt.want {
				t.Errorf("Bool(B=%q, def %v): got %v, want %v", tt.value, tt.def, got, tt.want)
			}
			if tt.wantErr {
				checkErr(t, r, "B=", tt.value, "not true or false")
			} else {
				checkNoErr(t, r)
			}
		})
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		value   string
		want    time.Duration
		wantErr bool
	}{
		{"", 5 * time.Second, false},
		{"30s", 30 * time.Second, false},
		{"1m30s", 90 * time.Second, false},
		{"250ms", 250 * time.Millisecond, false},
		{"0s", 0, false},
		{"0", 0, false},
		{"-1s", 5 * time.Second, true},
		{"30", 5 * time.Second, true},
		{"soon", 5 * time.Second, true},
		{"1d", 5 * time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			r := NewReader(env(map[string]string{"D": tt.value}))
			if got := r.Duration("D", 5*time.Second); got != tt.want {
				t.Errorf("Duration(D=%q): got %v, want %v", tt.value, got, tt.want)
			}
			if tt.wantErr {
				checkErr(t, r, "D=", tt.value, "not a duration")
			} else {
				checkNoErr(t, r)
			}
		})
	}
}

func TestErrCollectsEveryProblem(t *testing.T) {
	r := NewReader(env(map[string]string{
		"WORKERS":  "many",
		"VERBOSE":  "maybe",
		"TIMEOUT":  "forever",
		"RATIO":    "most",
		"GOOD_INT": "3",
		"NAME":     "ok",
	}))
	if got := r.Int("WORKERS", 4); got != 4 {
		t.Errorf("Int(WORKERS): got %d, want the default 4", got)
	}
	if got := r.Bool("VERBOSE", true); got != true {
		t.Errorf("Bool(VERBOSE): got %v, want the default true", got)
	}
	if got := r.Duration("TIMEOUT", time.Minute); got != time.Minute {
		t.Errorf("Duration(TIMEOUT): got %v, want the default 1m", got)
	}
	if got := r.Float("RATIO", 0.25); got != 0.25 {
		t.Errorf("Float(RATIO): got %v, want the default 0.25", got)
	}
	// Good values read after bad ones are still read.
	if got := r.Int("GOOD_INT", 0); got != 3 {
		t.Errorf("Int(GOOD_INT): got %d, want 3", got)
	}
	if got := r.String("NAME", ""); got != "ok" {
		t.Errorf("String(NAME): got %q, want %q", got, "ok")
	}
	r.Fail("LIMIT=%d is below %d", 1, 2)

	err := r.Err()
	if err == nil {
		t.Fatal("Err(): got nil, want every problem")
	}
	msg := err.Error()
	for _, want := range []string{
		`WORKERS="many" is not an integer`,
		`VERBOSE="maybe" is not true or false`,
		`TIMEOUT="forever" is not a duration`,
		`RATIO="most" is not a number`,
		"LIMIT=1 is below 2",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("Err(): got %q, want it to contain %q", msg, want)
		}
	}
	if !strings.HasPrefix(msg, "configuration: ") {
		t.Errorf("Err(): got %q, want it to start with %q", msg, "configuration: ")
	}
	if strings.Contains(msg, "GOOD_INT") || strings.Contains(msg, "NAME") {
		t.Errorf("Err(): got %q, want good variables left out", msg)
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 5 {
		t.Errorf("Err(): got %v, want 5 joined problems", err)
	}
	// Err is stable: asking twice gives the same report.
	if again := r.Err(); again == nil || again.Error() != msg {
		t.Errorf("Err() twice: got %v, want %q", again, msg)
	}
}

func TestErrNilWithoutProblems(t *testing.T) {
	r := NewReader(env(nil))
	r.String("A", "a")
	r.Int("B", 1)
	r.Float("C", 1)
	r.Bool("D", true)
	r.Duration("E", time.Second)
	r.Secret("F")
	checkNoErr(t, r)
}

func TestSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatalf("write %s: %v", p, err)
		}
		return p
	}
	tokenFile := write("token", "  s3cr3t-from-file\n\n")
	emptyFile := write("empty", "")
	multiline := write("multi", "line1\nline2\n")
	missing := filepath.Join(dir, "does-not-exist")

	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string // substring of Err; "" for none
	}{
		{"neither", nil, "", ""},
		{"from NAME", map[string]string{"TOKEN": "s3cr3t"}, "s3cr3t", ""},
		{"NAME wins over NAME_FILE", map[string]string{"TOKEN": "direct", "TOKEN_FILE": tokenFile}, "direct", ""},
		{"NAME wins over a missing NAME_FILE", map[string]string{"TOKEN": "direct", "TOKEN_FILE": missing}, "direct", ""},
		{"from NAME_FILE, trimmed", map[string]string{"TOKEN_FILE": tokenFile}, "s3cr3t-from-file", ""},
		{"NAME_FILE path trimmed", map[string]string{"TOKEN_FILE": " " + tokenFile + "\n"}, "s3cr3t-from-file", ""},
		{"empty NAME falls back to NAME_FILE", map[string]string{"TOKEN": "", "TOKEN_FILE": tokenFile}, "s3cr3t-from-file", ""},
		{"empty file", map[string]string{"TOKEN_FILE": emptyFile}, "", ""},
		{"inner newlines kept", map[string]string{"TOKEN_FILE": multiline}, "line1\nline2", ""},
		{"missing file", map[string]string{"TOKEN_FILE": missing}, "", "TOKEN_FILE"},
		{"directory", map[string]string{"TOKEN_FILE": dir}, "", "TOKEN_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(env(tt.env))
			if got := r.Secret("TOKEN"); got != tt.want {
				t.Errorf("Secret(TOKEN): got %q, want %q", got, tt.want)
			}
			if tt.wantErr == "" {
				checkNoErr(t, r)
				return
			}
			checkErr(t, r, tt.wantErr)
			if tt.name == "missing file" {
				checkErr(t, r, "no such file")
			}
		})
	}
}

func TestSecretNotInErrors(t *testing.T) {
	r := NewReader(env(map[string]string{"TOKEN": "s3cr3t", "PORT": "bad"}))
	r.Secret("TOKEN")
	r.Int("PORT", 1)
	if err := r.Err(); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Err(): got %v, want a problem that does not contain the secret", err)
	}
}

func TestReadServing(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Serving
		wantErr string
	}{
		{"defaults", nil, Serving{Port: 8080, DrainTimeout: 30 * time.Second, LogLevel: "info"}, ""},
		{"all set", map[string]string{
			"PORT": "9090", "HOST": " 127.0.0.1 ", "DRAIN_TIMEOUT": "5s", "K_SERVICE": "execute", "K_REVISION": "execute-00001", "LOG_LEVEL": "debug",
		}, Serving{Port: 9090, Host: "127.0.0.1", DrainTimeout: 5 * time.Second, Service: "execute", Revision: "execute-00001", LogLevel: "debug"}, ""},
		{"port 0", map[string]string{"PORT": "0"}, Serving{Port: 0, DrainTimeout: 30 * time.Second, LogLevel: "info"}, ""},
		{"port 1", map[string]string{"PORT": "1"}, Serving{Port: 1, DrainTimeout: 30 * time.Second, LogLevel: "info"}, ""},
		{"port 65535", map[string]string{"PORT": "65535"}, Serving{Port: 65535, DrainTimeout: 30 * time.Second, LogLevel: "info"}, ""},
		{"port 65536", map[string]string{"PORT": "65536"}, Serving{Port: 65536, DrainTimeout: 30 * time.Second, LogLevel: "info"}, "PORT=65536 is not a port"},
		{"port -1", map[string]string{"PORT": "-1"}, Serving{Port: -1, DrainTimeout: 30 * time.Second, LogLevel: "info"}, "PORT=-1 is not a port"},
		{"port not a number", map[string]string{"PORT": "http"}, Serving{Port: 8080, DrainTimeout: 30 * time.Second, LogLevel: "info"}, `PORT="http" is not an integer`},
		{"bad drain", map[string]string{"DRAIN_TIMEOUT": "-5s"}, Serving{Port: 8080, DrainTimeout: 30 * time.Second, LogLevel: "info"}, "DRAIN_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(env(tt.env))
			got := ReadServing(r, 8080)
			if got != tt.want {
				t.Errorf("ReadServing: got %+v, want %+v", got, tt.want)
			}
			if tt.wantErr == "" {
				checkNoErr(t, r)
			} else {
				checkErr(t, r, tt.wantErr)
			}
		})
	}
}

func TestReadRay(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "ray-token")
	if err := os.WriteFile(tokenFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// with returns the defaults changed by f.
	with := func(f func(*Ray)) Ray {
		c := Ray{Address: "http://127.0.0.1:8265", Timeout: 10 * time.Second, Retries: 2,
			RetryBase: 100 * time.Millisecond, BreakerFailures: 5, BreakerCooldown: 5 * time.Second}
		f(&c)
		return c
	}
	defaults := with(func(*Ray) {})
	tests := []struct {
		name    string
		env     map[string]string
		want    Ray
		wantErr string
	}{
		{"defaults", nil, defaults, ""},
		{"all set", map[string]string{"RAY_ADDRESS": "https://ray.example:8265", "RAY_AUTH_TOKEN": "t", "RAY_TIMEOUT": "3s",
			"RAY_RETRIES": "4", "RAY_RETRY_BASE": "50ms", "RAY_BREAKER_FAILURES": "8", "RAY_BREAKER_COOLDOWN": "1m"},
			Ray{Address: "https://ray.example:8265", Token: "t", Timeout: 3 * time.Second, Retries: 4,
				RetryBase: 50 * time.Millisecond, BreakerFailures: 8, BreakerCooldown: time.Minute}, ""},
		{"retries and breaker off", map[string]string{"RAY_RETRIES": "0", "RAY_BREAKER_FAILURES": "0"},
			with(func(c *Ray) { c.Retries, c.BreakerFailures = 0, 0 }), ""},
		{"token from file", map[string]string{"RAY_AUTH_TOKEN_FILE": tokenFile},
			with(func(c *Ray) { c.Token = "file-token" }), ""},
		{"bad timeout", map[string]string{"RAY_TIMEOUT": "ten"}, defaults, `RAY_TIMEOUT="ten"`},
		{"missing token file", map[string]string{"RAY_AUTH_TOKEN_FILE": tokenFile + ".missing"}, defaults, "RAY_AUTH_TOKEN_FILE"},
		{"negative retries", map[string]string{"RAY_RETRIES": "-1"}, with(func(c *Ray) { c.Retries = -1 }), "RAY_RETRIES=-1"},
		{"too many retries", map[string]string{"RAY_RETRIES": "100"}, with(func(c *Ray) { c.Retries = 100 }), "RAY_RETRIES=100"},
		{"zero retry base", map[string]string{"RAY_RETRY_BASE": "0s"}, with(func(c *Ray) { c.RetryBase = 0 }), "RAY_RETRY_BASE=0s"},
		{"negative breaker", map[string]string{"RAY_BREAKER_FAILURES": "-2"},
			with(func(c *Ray) { c.BreakerFailures = -2 }), "RAY_BREAKER_FAILURES=-2"},
		{"zero cooldown", map[string]string{"RAY_BREAKER_COOLDOWN": "0"},
			with(func(c *Ray) { c.BreakerCooldown = 0 }), "RAY_BREAKER_COOLDOWN=0s"},
		{"unparsable cooldown", map[string]string{"RAY_BREAKER_COOLDOWN": "soon"}, defaults, `RAY_BREAKER_COOLDOWN="soon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(env(tt.env))
			if got := ReadRay(r); got != tt.want {
				t.Errorf("ReadRay: got %+v, want %+v", got, tt.want)
			}
			if tt.wantErr == "" {
				checkNoErr(t, r)
			} else {
				checkErr(t, r, tt.wantErr)
			}
		})
	}
}
