package records

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
)

// KeyClaimPrefix starts the keys of the deployers' claims: one key per executor version
// that some running function deploys ("executor.deployers.<version>").
const KeyClaimPrefix = "executor.deployers."

// Claim says that functions deploying an executor version run: they refresh Seen while
// they run, and FirstSeen is when that version's first deployer appeared (again, after
// its claim went stale). Deployers of different versions (old and new function revisions
// side by side during a rollout) use it to agree on the newest version instead of
// replacing each other's executor (executor.Deployer).
type Claim struct {
	Version   string `json:"version"`
	FirstSeen string `json:"first_seen"`
	Seen      string `json:"seen"`
}

// plainVersion is a version that can stand in a key as it is; versions are hex digests
// (executor.Version), anything else is hashed.
var plainVersion = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ClaimKey is the key of version's claim.
func ClaimKey(version string) string {
	if plainVersion.MatchString(version) {
		return KeyClaimPrefix + version
	}
	sum := sha256.Sum256([]byte(version))
	return KeyClaimPrefix + hex.EncodeToString(sum[:16])
}

// Claim reads version's claim and its revision (0 when absent). A claim of another version
// under the same key (a hashed version's collision) or one that does not decode reads as
// absent, with the revision the next SetClaim needs to replace it.
func (s *Store) Claim(ctx context.Context, version string) (c Claim, rev uint64, err error) {
	rev, ok, err := s.getRevised(ctx, ClaimKey(version), &c)
	if !ok || c.Version != version {
		c = Claim{}
	}
	return c, rev, err
}

// SetClaim writes c by compare-and-set at rev (0: create). ErrAlreadyExists when another
// deployer wrote it first.
func (s *Store) SetClaim(ctx context.Context, c Claim, rev uint64) error {
	return s.setRevised(ctx, ClaimKey(c.Version), c, rev)
}
