package domain

// Caller is who a request is from, as the ingress authenticated it: its name (the token's
// caller, else the client certificate's) and whether it has the admin role. The zero
// Caller is anonymous: access control is off, or the request reached a function without
// the internal credential that vouches for the ingress's word (an open event type).
type Caller struct {
	Name  string
	Admin bool
}

// Sees reports whether the caller may see, watch or cancel a deliberation owned by owner.
// A deliberation accepted without an authenticated caller has no owner and is everyone's;
// one with an owner is its owner's and the admins'. Anything else answers exactly as an
// unknown id does, so that ids of others are no oracle.
func (c Caller) Sees(owner string) bool {
	return owner == "" || c.Admin || owner == c.Name
}

// IdempotencyNamespace is the key the deliberation id derives from for an idempotency key
// sent by this caller: keys are the caller's own, so one caller can neither learn nor block
// another's deliberation by reusing its key. An anonymous caller's keys are used as they
// are (as before owners existed).
func (c Caller) IdempotencyNamespace(key string) string {
	if c.Name == "" || key == "" {
		return key
	}
	return "owner:" + c.Name + "\x00" + key
}
