package domain

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// subjectToken is what a minted deliberation ID must be: lower-case letters, digits and '-',
// which is a valid NATS subject token, Ray submission_id and log file name.
var subjectToken = regexp.MustCompile(`^[a-z0-9-]+$`)

// checkMinted fails the test unless id is a valid minted deliberation ID.
func checkMinted(t *testing.T, id string) {
	t.Helper()
	if ours, err := LookupDeliberationID(id); !ours || err != nil {
		t.Errorf("LookupDeliberationID(%q): got %v, %v, want true, nil", id, ours, err)
	}
	if !subjectToken.MatchString(id) {
		t.Errorf("id %q: got characters outside [a-z0-9-], want only those", id)
	}
	if strings.ContainsAny(id, ".*> \t\r\n/") {
		t.Errorf("id %q: got a NATS-reserved character or white space, want none", id)
	}
	if !strings.HasPrefix(id, "delib-") {
		t.Errorf("id %q: got no delib- prefix, want one", id)
	}
	if len(id) > 128 {
		t.Errorf("id %q: got %d characters, want at most 128", id, len(id))
	}
}

func TestNewDeliberationID(t *testing.T) {
	const n = 20000
	seen := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		id := NewDeliberationID()
		if seen[id] {
			t.Fatalf("NewDeliberationID call %d: got %q again, want a new id", i, id)
		}
		seen[id] = true
		if i < 200 { // the format is fixed; checking a sample keeps the test fast
			checkMinted(t, id)
		}
	}
	// 128 random bits in unpadded base32 are 26 characters.
	if got, want := len(NewDeliberationID()), len("delib-")+26; got != want {
		t.Errorf("len(NewDeliberationID()): got %d, want %d", got, want)
	}
}

func TestDeliberationIDForKey(t *testing.T) {
	keys := []string{
		"",
		"k",
		"order-42",
		"event\x00ray-executor/ingress\x00abc",
		"a.b.c",
		"with spaces and\ttabs\nand newlines",
		"unicode: ünïcødé ✓ 日本語",
		">",
		"*",
		"a.*.>",
		"../../etc/passwd",
		"\x00\x01\xff\xfe",
		strings.Repeat("long", 10000),
	}
	seen := map[string]string{}
	for _, key := range keys {
		id := DeliberationIDForKey(key)
		checkMinted(t, id)
		if again := DeliberationIDForKey(key); again != id {
			t.Errorf("DeliberationIDForKey(%q) twice: got %q then %q, want the same", key, id, again)
		}
		if other, dup := seen[id]; dup {
			t.Errorf("DeliberationIDForKey: keys %q and %q both got %q, want different ids", other, key, id)
		}
		seen[id] = key
	}
	// A key-derived id cannot be mistaken for a random one of the same shape.
	if a, b := DeliberationIDForKey("x"), NewDeliberationID(); len(a) == len(b) && a[:7] == b[:7] {
		t.Errorf("ids: got key-derived %q and random %q with the same shape, want them distinguishable", a, b)
	}
}

func TestDeliberationIDForKeyManyKeys(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 5000; i++ {
		key := strings.Repeat("k", i%7) + string(rune('a'+i%26)) + strings.Repeat(".", i/26)
		id := DeliberationIDForKey(key)
		if seen[id] {
			t.Fatalf("DeliberationIDForKey(%q): got %q, already produced for another key", key, id)
		}
		seen[id] = true
	}
}

func TestLookupDeliberationID(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		ours    bool
		invalid bool
	}{
		{"minted random", NewDeliberationID(), true, false},
		{"minted for key", DeliberationIDForKey("k"), true, false},
		{"single char", "a", true, false},
		{"digit first", "1abc", true, false},
		{"ray style submission id", "raysubmit_AbC123", true, false},
		{"128 chars", strings.Repeat("a", 128), true, false},

		// Ids this system never minted: a fair question, answered not_found.
		{"original's id for a backlog review", "deliberation-ceremony-c1:story-s1:role-ARCHITECT-1733000000", false, false},
		{"original's id without a colon: looked up, then not found", "deliberation-derive-p1-1733000000", true, false},
		{"129 chars", strings.Repeat("a", 129), false, false},
		{"512 bytes", strings.Repeat("a", 512), false, false},
		{"dot", "delib-a.b", false, false},
		{"slash", "delib-a/b", false, false},
		{"path traversal", "../etc", false, false},
		{"star", "delib-*", false, false},
		{"gt", "delib->", false, false},
		{"space", "delib a", false, false},
		{"leading space", " delib-a", false, false},
		{"trailing newline", "delib-a\n", false, false},
		{"tab", "delib\ta", false, false},
		{"leading dash", "-delib", false, false},
		{"leading underscore", "_delib", false, false},
		{"colon", "delib:a", false, false},
		{"non-ascii", "délib", false, false},
		{"nul", "delib\x00", false, false},

		{"empty", "", false, true},
		{"513 bytes", strings.Repeat("a", 513), false, true},
		{"very long", strings.Repeat("a", 10000), false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ours, err := LookupDeliberationID(tt.id)
			if ours != tt.ours {
				t.Errorf("LookupDeliberationID(%.40q): got ours=%v, want %v", tt.id, ours, tt.ours)
			}
			if !tt.invalid {
				if err != nil {
					t.Errorf("LookupDeliberationID(%.40q): got %v, want nil", tt.id, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("LookupDeliberationID(%.40q): got %v, want an error wrapping ErrInvalid", tt.id, err)
			}
			if !strings.Contains(err.Error(), "deliberation_id") {
				t.Errorf("LookupDeliberationID(%.40q): got %q, want the message to name deliberation_id", tt.id, err)
			}
		})
	}
}
