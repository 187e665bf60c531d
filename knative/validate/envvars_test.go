package validate

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// leftUnset are the variables the binaries read that no manifest sets, on purpose.
var leftUnset = map[string]string{
	"PORT":                                "Knative sets it from the container port",
	"K_SERVICE":                           "Knative sets it",
	"K_REVISION":                          "Knative sets it",
	"HOST":                                "must stay unset so the binaries listen on every interface (kubelet probes come from outside the pod)",
	"GRPC_PORT":                           "the ingress's fallback when PORT is unset; under Knative PORT always is",
	"CE_SOURCE":                           "the per-function default ray-executor/<function> is what callers expect",
	"RAY_AUTH_TOKEN_FILE":                 "the token comes from the Secret as RAY_AUTH_TOKEN",
	"ENABLE_NATS":                         "read only to refuse false: NATS holds the records and the work queue",
	"NATS_TOKEN_FILE":                     "the token comes from the Secret as NATS_TOKEN",
	"NATS_PASSWORD_FILE":                  "the password comes from the Secret as NATS_PASSWORD",
	"AUTH_TOKENS":                         "the ingress's tokens come from the Secret ray-executor-ingress-auth, mounted as AUTH_TOKENS_FILE",
	"TLS_CERT_FILE":                       "queue-proxy speaks h2c to the ingress: TLS ends at the cluster's Knative ingress (mTLS is for direct deployments; see ingress.yaml)",
	"TLS_KEY_FILE":                        "as TLS_CERT_FILE",
	"TLS_CLIENT_CA_FILE":                  "as TLS_CERT_FILE",
	"TLS_CLIENT_NAMES":                    "as TLS_CERT_FILE",
	"INTERNAL_TOKEN_FILE":                 "the internal credential comes from the Secret ray-executor-internal as INTERNAL_TOKEN",
	"EVENTING_OIDC_DISCOVERY_URL":         "the default, the API server (https://kubernetes.default.svc), serves the issuer's discovery document and keys to service accounts",
	"EVENTING_OIDC_CA_FILE":               "the default, the pod's service-account ca.crt, verifies the API server",
	"EVENTING_OIDC_TOKEN_FILE":            "the default, the pod's service-account token (rotated by the kubelet), is what the API server's discovery endpoints admit",
	"OTEL_EXPORTER_OTLP_ENDPOINT":         "no collector is assumed: set it (knative/README.md \"Telemetry\") to export traces and metrics over OTLP; without it metrics are still scraped from METRICS_PORT",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":  "as OTEL_EXPORTER_OTLP_ENDPOINT, for traces alone",
	"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "as OTEL_EXPORTER_OTLP_ENDPOINT, for metrics alone",
	"OTEL_EXPORTER_OTLP_PROTOCOL":         "the OpenTelemetry default, http/protobuf, is what collectors listen for on 4318",
	"OTEL_EXPORTER_OTLP_HEADERS":          "a collector's key, if it needs one, comes from a Secret the operator adds (knative/README.md \"Telemetry\")",
	"OTEL_EXPORTER_OTLP_HEADERS_FILE":     "as OTEL_EXPORTER_OTLP_HEADERS",
	"OTEL_METRIC_EXPORT_INTERVAL":         "the OpenTelemetry default, 60 s, when exporting over OTLP",
	"OTEL_BSP_SCHEDULE_DELAY":             "passed on to the executor job only when set; the SDK's default, 5 s, otherwise",
	"OTEL_METRICS_EXEMPLAR_FILTER":        "exemplars are off unless set (they cost every measurement made in a sampled span, and nothing here reads them); trace_based exports them over OTLP",
	"OTEL_SERVICE_NAME":                   "each binary names itself ray-executor-<function>",
	"OTEL_SDK_DISABLED":                   "telemetry costs nothing to export while no endpoint is set; the metrics port stays useful",
}

// The functions' internal credential has a Secret of its own, required rather than optional:
// a function must never start open because the Secret was forgotten.
const (
	internalSecretName = "ray-executor-internal"
	internalSecretKey  = "token"
)

var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func isEnvVarName(s string) bool { return envVarName.MatchString(s) }

func secretKeys(s *corev1.Secret) map[string]bool {
	out := map[string]bool{}
	for k := range s.StringData {
		out[k] = true
	}
	for k := range s.Data {
		out[k] = true
	}
	return out
}

// parses reports whether v is a value the binary's config.Reader accepts for method.
func parses(method, v string) error {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil // unset: the default
	}
	var err error
	switch method {
	case "Int":
		_, err = strconv.Atoi(v)
	case "Float":
		_, err = strconv.ParseFloat(v, 64)
	case "Bool":
		_, err = strconv.ParseBool(v)
	case "Duration":
		var d time.Duration
		if d, err = time.ParseDuration(v); err == nil && d < 0 {
			err = fmt.Errorf("negative")
		}
	}
	return err
}

// TestEnvVars cross-checks, for each binary, the variables its Service provides (the
// ConfigMap through envFrom, its env entries, the Secret's keys) against the variables its
// Go source reads:
//   - every env entry a Service sets is read by that binary (strict);
//   - every ConfigMap key is read by at least one binary that loads the ConfigMap;
//   - every variable a binary reads is provided to it, or listed in leftUnset with why;
//   - literal values parse as the binary parses them (Int, Duration, Bool, Float).
func TestEnvVars(t *testing.T) {
	m := load(t)
	cm := m.configMaps[configMapName]
	sec := m.secrets[secretName]
	if cm == nil || sec == nil {
		t.Fatalf("ConfigMap %q and Secret %q must both be declared", configMapName, secretName)
	}
	keys := secretKeys(sec)

	readsByBin := map[string]readSet{}
	readByAny := map[string]bool{}
	for _, bin := range binaries(t) {
		reads, err := envReads(bin)
		if err != nil {
			t.Fatalf("reading the source of functions/%s: %v", bin, err)
		}
		readsByBin[bin] = reads
		for n := range reads {
			readByAny[n] = true
		}
	}

	// What the executor's version is made of (its job's environment: shared/executor's
	// Settings.Env): execute and list both deploy it, so a value set on one Service alone
	// would make the two deploy different versions and roll the executor back and forth.
	// These come from the ConfigMap or the one Secret, the same for every Service.
	executorVars, err := funcReads("shared/executor.ReadSettings", "shared/records.ReadConfig", "shared/natsbus.ReadConfig")
	if err != nil {
		t.Fatalf("reading the executor's settings from the source: %v", err)
	}
	if _, ok := executorVars["EXECUTOR_MAX_REPLICAS"]; !ok || len(executorVars) < 10 {
		t.Fatalf("the executor's settings read from the source look incomplete: %v", sortedKeys(executorVars))
	}

	cmReaders := map[string][]string{} // ConfigMap key -> binaries that load it and read it
	secretUsed := map[string]bool{}
	for _, bin := range binaries(t) {
		s, ok := m.services[bin]
		if !ok || len(s.Spec.Template.Spec.Containers) != 1 {
			t.Errorf("functions/%s: no single-container Service %q (TestServices says more)", bin, bin)
			continue
		}
		reads := readsByBin[bin]
		c := s.Spec.Template.Spec.Containers[0]
		provided := map[string]string{} // name -> where from

		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef == nil || ef.ConfigMapRef.Name != configMapName || ef.Prefix != "" || ef.SecretRef != nil {
				t.Errorf("Service %q: envFrom %+v: only the ConfigMap %q, without prefix, can be checked", bin, ef, configMapName)
				continue
			}
			for k, v := range cm.Data {
				provided[k] = "ConfigMap"
				if r, ok := reads[k]; ok {
					cmReaders[k] = append(cmReaders[k], bin)
					if err := parses(r.Method, v); err != nil {
						t.Errorf("ConfigMap %s=%q: functions/%s reads it with Reader.%s, which refuses it: %v", k, v, bin, r.Method, err)
					}
				}
			}
		}

		for _, e := range c.Env {
			if prev, dup := provided[e.Name]; dup {
				t.Errorf("Service %q: %s is set twice (env and %s): one would silently win", bin, e.Name, prev)
			}
			r, ok := reads[e.Name]
			if !ok {
				t.Errorf("Service %q sets %s, which functions/%s never reads", bin, e.Name, bin)
			}
			if _, shared := executorVars[e.Name]; shared && (e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef != nil) {
				t.Errorf("Service %q sets %s itself: it is one of the executor's settings, which every function that deploys "+
					"the executor must read alike (set it in the ConfigMap)", bin, e.Name)
			}
			switch vf := e.ValueFrom; {
			case vf == nil:
				provided[e.Name] = "env"
				if ok {
					if err := parses(r.Method, e.Value); err != nil {
						t.Errorf("Service %q: %s=%q is refused by Reader.%s: %v", bin, e.Name, e.Value, r.Method, err)
					}
				}
			case vf.SecretKeyRef != nil && vf.SecretKeyRef.Name == internalSecretName:
				provided[e.Name] = "Secret"
				ref := vf.SecretKeyRef
				if e.Name != "INTERNAL_TOKEN" || ref.Key != internalSecretKey {
					t.Errorf("Service %q: %s from Secret %q key %q, want INTERNAL_TOKEN from key %q", bin, e.Name, ref.Name, ref.Key, internalSecretKey)
				}
				if ref.Optional != nil && *ref.Optional {
					t.Errorf("Service %q: INTERNAL_TOKEN must not be optional: without the Secret the function would run open", bin)
				}
				if isec := m.secrets[internalSecretName]; isec == nil || !secretKeys(isec)[internalSecretKey] {
					t.Errorf("Service %q: INTERNAL_TOKEN comes from Secret %q key %q, which no template under knative/secrets/ declares", bin, internalSecretName, internalSecretKey)
				}
			case vf.SecretKeyRef != nil:
				provided[e.Name] = "Secret"
				ref := vf.SecretKeyRef
				if ref.Name != secretName || ref.Key != e.Name {
					t.Errorf("Service %q: %s from Secret %q key %q, want Secret %q key %q (keys are the variable names)", bin, e.Name, ref.Name, ref.Key, secretName, e.Name)
				}
				if !keys[ref.Key] {
					t.Errorf("Service %q: %s refers to key %q, which the Secret template lacks", bin, e.Name, ref.Key)
				}
				if ref.Optional == nil || !*ref.Optional {
					t.Errorf("Service %q: %s must be optional: true (a deployment without that credential must start)", bin, e.Name)
				}
				secretUsed[ref.Key] = true
			case vf.ConfigMapKeyRef != nil:
				provided[e.Name] = "ConfigMap key"
				if vf.ConfigMapKeyRef.Name != configMapName || cm.Data[vf.ConfigMapKeyRef.Key] == "" && !hasKey(cm.Data, vf.ConfigMapKeyRef.Key) {
					t.Errorf("Service %q: %s from ConfigMap %q key %q, which is not declared", bin, e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
				}
			default:
				t.Errorf("Service %q: %s: unsupported valueFrom %+v", bin, e.Name, vf)
			}
		}

		var fromCM, fromEnv, fromSecret, unset, ignored []string
		for _, n := range sortedKeys(reads) {
			switch provided[n] {
			case "ConfigMap", "ConfigMap key":
				fromCM = append(fromCM, n)
			case "env":
				fromEnv = append(fromEnv, n)
			case "Secret":
				fromSecret = append(fromSecret, n)
			default:
				if _, ok := leftUnset[n]; !ok {
					t.Errorf("functions/%s reads %s (%s), but its Service provides no value and leftUnset does not say why", bin, n, reads[n].Where)
				}
				unset = append(unset, n)
			}
		}
		for _, k := range sortedKeys(cm.Data) {
			if _, ok := reads[k]; !ok && provided[k] == "ConfigMap" {
				ignored = append(ignored, k)
			}
		}
		t.Logf("%s reads %d variables: %d from the ConfigMap, env %v, Secret %v, left unset %v; ignores the ConfigMap's %v",
			bin, len(reads), len(fromCM), fromEnv, fromSecret, unset, ignored)
	}

	for _, k := range sortedKeys(cm.Data) {
		if len(cmReaders[k]) == 0 {
			t.Errorf("ConfigMap key %s is read by no binary that loads the ConfigMap (misspelt, or removed from the code?)", k)
		}
		if why, ok := leftUnset[k]; ok {
			t.Errorf("ConfigMap key %s must stay unset: %s", k, why)
		}
	}
	for k := range keys {
		if !secretUsed[k] {
			t.Errorf("Secret key %s is used by no Service", k)
		}
	}
	for _, n := range sortedKeys(leftUnset) {
		if !readByAny[n] {
			t.Errorf("leftUnset lists %s, which no binary reads any more: remove it", n)
		}
	}
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }
