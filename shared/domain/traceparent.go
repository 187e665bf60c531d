package domain

// ValidTraceparent reports whether tp is a W3C Trace Context traceparent this system passes
// on: version 00, "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>", lower-case, ids
// not all zeros (https://www.w3.org/TR/trace-context/#traceparent-header). Anything else
// a caller sends is dropped rather than copied into records, events and LLM requests.
func ValidTraceparent(tp string) bool {
	if len(tp) != 55 || tp[0] != '0' || tp[1] != '0' || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	hex := func(s string) (ok, zero bool) {
		zero = true
		for i := 0; i < len(s); i++ {
			c := s[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false, false
			}
			if c != '0' {
				zero = false
			}
		}
		return true, zero
	}
	trace, tz := hex(tp[3:35])
	parent, pz := hex(tp[36:52])
	flags, _ := hex(tp[53:55])
	return trace && parent && flags && !tz && !pz
}

// CleanTraceparent is tp when it is valid (ValidTraceparent), else "".
func CleanTraceparent(tp string) string {
	if ValidTraceparent(tp) {
		return tp
	}
	return ""
}
