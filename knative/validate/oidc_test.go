package validate

import (
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/pkg/kmeta"
)

// oidcServiceAccount is the OIDC service account Knative Eventing v0.50 gives a Trigger:
// its name, the suffix -oidc-<group>-<kind> and kmeta's hashing past 63 characters, lower
// case (knative.dev/eventing pkg/auth GetOIDCServiceAccountNameForResource; importing that
// package would pull client-go's clients and cert-manager into this module).
func oidcServiceAccount(name string) string {
	gvk := eventingv1.SchemeGroupVersion.WithKind("Trigger")
	return strings.ToLower(kmeta.ChildName(name, "-oidc-"+gvk.Group+"-"+gvk.Kind))
}

// TestEventingOIDC checks that the Broker's deliveries can be authenticated and that
// nothing else submits: every Trigger names its subscriber's EVENTING_OIDC_AUDIENCE, and
// the subject Knative Eventing gives the Trigger's OIDC service account is mapped in that Service's EVENTING_OIDC_CALLERS, with a role that
// may do what the Trigger delivers; no Service opens a type that starts or stops work.
func TestEventingOIDC(t *testing.T) {
	m := load(t)
	consts := rpcConsts(t)
	writes := map[string]bool{
		consts["TypeExecuteDeliberation"]:              true,
		consts["TypeExecuteBacklogReviewDeliberation"]: true,
		consts["TypeCancelDeliberation"]:               true,
	}
	issuer := m.configMaps[configMapName].Data["EVENTING_OIDC_ISSUER"]
	if u, err := url.Parse(issuer); err != nil || u.Scheme != "https" || u.Host == "" {
		t.Errorf("ConfigMap %s: EVENTING_OIDC_ISSUER %q, want the cluster's https issuer", configMapName, issuer)
	}

	audiences := map[string]string{} // audience -> Service
	for _, bin := range binaries(t) {
		s, ok := m.services[bin]
		if !ok || len(s.Spec.Template.Spec.Containers) != 1 {
			continue // TestServices reports it
		}
		c := s.Spec.Template.Spec.Containers[0]
		for _, typ := range strings.Split(literalEnv(c, "INTERNAL_AUTH_OPEN_TYPES"), ",") {
			if writes[strings.TrimSpace(typ)] {
				t.Errorf("Service %s: INTERNAL_AUTH_OPEN_TYPES opens %s: any pod could submit or cancel anonymously", bin, typ)
			}
		}
		if aud := literalEnv(c, "EVENTING_OIDC_AUDIENCE"); aud != "" {
			if prev, dup := audiences[aud]; dup {
				t.Errorf("Services %s and %s share the audience %q: a token for one would be good for the other", prev, bin, aud)
			}
			audiences[aud] = bin
		}
	}

	for name, tr := range m.triggers {
		ref := tr.Spec.Subscriber.Ref
		if ref == nil {
			continue // TestEventing reports it
		}
		where := "Trigger " + name
		s, ok := m.services[ref.Name]
		if !ok || len(s.Spec.Template.Spec.Containers) != 1 {
			continue
		}
		c := s.Spec.Template.Spec.Containers[0]
		want := literalEnv(c, "EVENTING_OIDC_AUDIENCE")
		if want == "" {
			t.Errorf("%s: Service %s sets no EVENTING_OIDC_AUDIENCE", where, ref.Name)
		} else if got := tr.Spec.Subscriber.Audience; got == nil || *got != want {
			t.Errorf("%s: subscriber audience %v, want %q (EVENTING_OIDC_AUDIENCE of %s)", where, got, want, ref.Name)
		}
		subject := "system:serviceaccount:" + tr.Namespace + ":" + oidcServiceAccount(tr.Name)
		role, mapped := callerRoles(literalEnv(c, "EVENTING_OIDC_CALLERS"))[subject]
		typ := ""
		if tr.Spec.Filter != nil {
			typ = tr.Spec.Filter.Attributes["type"]
		}
		switch {
		case !mapped:
			t.Errorf("%s: its OIDC subject %s is not in EVENTING_OIDC_CALLERS of %s: its deliveries would be refused", where, subject, ref.Name)
		case writes[typ] && role == "read":
			t.Errorf("%s delivers %s, which the read role of %s may not do", where, typ, subject)
		}
	}
}

// literalEnv is the value a container's env sets for name ("" when unset or not a literal).
func literalEnv(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom == nil {
			return e.Value
		}
	}
	return ""
}

// callerRoles reads EVENTING_OIDC_CALLERS as the functions do: subject -> role.
func callerRoles(text string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		role := "write"
		if len(f) > 2 {
			role = f[2]
		}
		out[f[0]] = role
	}
	return out
}
