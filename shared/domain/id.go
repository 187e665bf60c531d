package domain

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
)

// Deliberation IDs are the Ray submission_id, the CloudEvent subject and a NATS subject
// token, so they are restricted to lower-case letters, digits and '-': valid in all three
// (no '.', '*', '>' or white space, which NATS reserves) and safe in Ray's log file names.
const idPrefix = "delib-"

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewDeliberationID returns a random ID (128 bits), for requests without an idempotency key.
func NewDeliberationID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("domain: crypto/rand failed: %v", err)) // never happens on Linux
	}
	return idPrefix + lowerBase32.EncodeToString(b[:])
}

// DeliberationIDForKey derives the ID from an idempotency key, so every retry of a request
// names the same deliberation. The key is hashed: any bytes are allowed in it and none of
// them reach Ray, NATS or a log file name.
func DeliberationIDForKey(key string) string {
	sum := sha256.Sum256([]byte("ray-executor/deliberation/v1\x00" + key))
	return idPrefix + "k" + hex.EncodeToString(sum[:16])
}

// MaxLookupIDBytes bounds a deliberation id a caller asks about. Callers keep ids across
// deployments, including ones the original service minted (`deliberation-<task_id>-<unix
// seconds>`, so with ':' inside), and poll them: any id up to this size is a fair question
// whose answer may be "not found"; a longer or empty one is a malformed request.
const MaxLookupIDBytes = 512

// LookupDeliberationID says whether id can name a deliberation of this system. It returns
// an error wrapping ErrInvalid only for an empty id or one over MaxLookupIDBytes; any other
// id that this system could not have minted (foreign characters, the original's ids) is
// (false, nil): it names no deliberation here, so readers answer not_found without passing
// it to Ray, a NATS subject or a file name.
func LookupDeliberationID(id string) (bool, error) {
	switch {
	case id == "":
		return false, fmt.Errorf("deliberation_id is required: %w", ErrInvalid)
	case len(id) > MaxLookupIDBytes:
		return false, fmt.Errorf("deliberation_id is %d bytes, over the limit of %d: %w", len(id), MaxLookupIDBytes, ErrInvalid)
	}
	return validID(id), nil
}

// validID matches ^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$ (by hand: it runs on every status call).
func validID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}
