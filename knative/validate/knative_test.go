package validate

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/pkg/apis"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// createContext is what the Knative webhooks see when an object is created: the default
// config-defaults, config-autoscaler and config-features of a fresh install.
func createContext() context.Context { return apis.WithinCreate(context.Background()) }

// validatable is every Knative type: SetDefaults then Validate, as the webhooks do.
type validatable interface {
	apis.Defaultable
	apis.Validatable
}

// TestKnativeValidation runs Knative's own defaulting and validation on every Knative object.
func TestKnativeValidation(t *testing.T) {
	m := load(t)
	check := func(kind, name string, obj validatable) {
		t.Helper()
		ctx := createContext()
		obj.SetDefaults(ctx)
		err := obj.Validate(ctx)
		if e := err.Filter(apis.ErrorLevel); e != nil {
			t.Errorf("%s %q: Knative rejects it:\n%v", kind, name, e)
		}
		// Warnings are accepted by the webhook (kubectl prints them); fail on them too,
		// so that what is deployed is what Knative recommends.
		if w := err.Filter(apis.WarningLevel); w != nil {
			t.Errorf("%s %q: Knative warns:\n%v", kind, name, w)
		}
	}
	n := 0
	for name, s := range m.services {
		check("Service", name, s.DeepCopy())
		n++
	}
	for name, b := range m.brokers {
		check("Broker", name, b.DeepCopy())
		n++
	}
	for name, tr := range m.triggers {
		check("Trigger", name, tr.DeepCopy())
		n++
	}
	for name, p := range m.pingSources {
		check("PingSource", name, p.DeepCopy())
		n++
	}
	// 4 binaries + the dead-letter sink, 1 Broker, 7 Triggers, 1 PingSource at least.
	if n < 14 {
		t.Errorf("validated %d Knative objects, expected at least 14: is a manifest missing?", n)
	}
}

// TestCoreObjects checks the plain Kubernetes objects: names and ConfigMap/Secret keys valid.
func TestCoreObjects(t *testing.T) {
	m := load(t)
	if _, ok := m.namespaces[namespace]; !ok {
		t.Errorf("no Namespace %q", namespace)
	}
	cm, ok := m.configMaps[configMapName]
	if !ok {
		t.Fatalf("no ConfigMap %q", configMapName)
	}
	if len(cm.Data) == 0 || len(cm.BinaryData) != 0 {
		t.Errorf("ConfigMap %q: want string data only, got %d data and %d binaryData keys", configMapName, len(cm.Data), len(cm.BinaryData))
	}
	for k := range cm.Data {
		if !isEnvVarName(k) {
			t.Errorf("ConfigMap key %q is not an environment variable name (envFrom would skip it)", k)
		}
	}
	sec, ok := m.secrets[secretName]
	if !ok {
		t.Fatalf("no Secret template %q", secretName)
	}
	if len(secretKeys(sec)) == 0 {
		t.Errorf("Secret %q has no keys", secretName)
	}
	for k, v := range sec.StringData {
		if !isEnvVarName(k) {
			t.Errorf("Secret key %q is not an environment variable name", k)
		}
		if v != "" {
			t.Errorf("Secret template key %q has a value: the template must hold empty placeholders only, never credentials", k)
		}
	}
	if len(sec.Data) != 0 {
		t.Errorf("Secret template %q: use stringData with empty placeholders, not data", secretName)
	}
}

// TestLayout checks what `ko apply -f knative/` applies and in what order.
func TestLayout(t *testing.T) {
	m := load(t)
	var first *doc
	for i := range m.docs {
		d := &m.docs[i]
		if d.Applied && first == nil {
			first = d
		}
		if d.Kind != "v1/Namespace" && d.NS != namespace {
			t.Errorf("%s: metadata.namespace %q, want %q", d, d.NS, namespace)
		}
		switch {
		case d.Kind == "v1/Secret" && d.Applied:
			t.Errorf("%s: a Secret in knative/ itself is re-applied by every `make deploy`, overwriting the real credentials; keep the template in knative/secrets/", d)
		case d.Kind == monitoringKind && d.Applied:
			t.Errorf("%s: a PrometheusRule in knative/ itself makes `make deploy` fail on clusters without the Prometheus Operator; keep it in knative/monitoring/", d)
		case d.Kind != "v1/Secret" && d.Kind != monitoringKind && !d.Applied:
			t.Errorf("%s: not in knative/ itself, so `ko apply -f knative/` would not apply it", d)
		}
	}
	if first == nil || first.Kind != "v1/Namespace" || first.Name != namespace {
		t.Errorf("the first document ko applies is %v; want the Namespace %q, so that it exists before what lives in it", first, namespace)
	}
}

// TestServices checks each binary's Service beyond what Knative validates.
func TestServices(t *testing.T) {
	m := load(t)
	bins := binaries(t)
	for _, b := range bins {
		s, ok := m.services[b]
		if !ok {
			t.Errorf("binary functions/%s/cmd has no Knative Service %q", b, b)
			continue
		}
		spec := s.Spec.Template.Spec
		if len(spec.Containers) != 1 {
			t.Errorf("Service %q: %d containers, want 1", b, len(spec.Containers))
			continue
		}
		c := spec.Containers[0]
		if want := "ko://" + modulePath + "/functions/" + b + "/cmd"; c.Image != want {
			t.Errorf("Service %q: image %q, want %q", b, c.Image, want)
		}
		checkResources(t, b, c.Resources)
		hasConfig := false
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef != nil && ef.ConfigMapRef.Name == configMapName && ef.Prefix == "" {
				hasConfig = true
			}
		}
		if !hasConfig {
			t.Errorf("Service %q: no envFrom configMapRef %q", b, configMapName)
		}
		ann := s.Spec.Template.Annotations
		target, err := strconv.ParseFloat(ann[autoscaling.TargetAnnotationKey], 64)
		if err != nil || target <= 0 {
			t.Errorf("Service %q: annotation %s=%q, want a positive number", b, autoscaling.TargetAnnotationKey, ann[autoscaling.TargetAnnotationKey])
		}
		cc := int64(-1)
		if spec.ContainerConcurrency != nil {
			cc = *spec.ContainerConcurrency
		}
		if b == ingressName {
			checkIngress(t, m, s, c, cc)
			continue
		}
		// The functions: cluster-local, scale to zero, bounded concurrency, HTTP probes.
		if v := s.Labels["networking.knative.dev/visibility"]; v != "cluster-local" {
			t.Errorf("Service %q: label networking.knative.dev/visibility=%q, want cluster-local (only the ingress is public)", b, v)
		}
		if v := ann[autoscaling.MinScaleAnnotationKey]; v != "0" {
			t.Errorf("Service %q: %s=%q, want \"0\" (functions scale to zero)", b, autoscaling.MinScaleAnnotationKey, v)
		}
		if cc <= 0 {
			t.Errorf("Service %q: containerConcurrency %d, want a positive bound", b, cc)
		} else if target > float64(cc) {
			t.Errorf("Service %q: autoscaling target %v above containerConcurrency %d", b, target, cc)
		}
		if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
			t.Errorf("Service %q: readinessProbe must be httpGet /readyz, got %+v", b, p)
		}
		if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("Service %q: livenessProbe must be httpGet /healthz, got %+v", b, p)
		}
	}
	// Every other Service (the dead-letter sink) is cluster-local and no ko:// image.
	for name, s := range m.services {
		if contains(bins, name) {
			continue
		}
		if v := s.Labels["networking.knative.dev/visibility"]; v != "cluster-local" {
			t.Errorf("Service %q: want label networking.knative.dev/visibility=cluster-local", name)
		}
		for _, c := range s.Spec.Template.Spec.Containers {
			if strings.HasPrefix(c.Image, "ko://") {
				t.Errorf("Service %q: ko image %q that is none of the binaries %v", name, c.Image, bins)
			}
			checkResources(t, name, c.Resources)
		}
	}
}

func checkIngress(t *testing.T, m *manifests, s *servingv1.Service, c corev1.Container, cc int64) {
	t.Helper()
	if v, ok := s.Labels["networking.knative.dev/visibility"]; ok {
		t.Errorf("ingress: label networking.knative.dev/visibility=%q; the ingress is the public front door", v)
	}
	if v := s.Spec.Template.Annotations[autoscaling.MinScaleAnnotationKey]; v != "1" {
		t.Errorf("ingress: %s=%q, want \"1\" (long-lived gRPC connections and streams)", autoscaling.MinScaleAnnotationKey, v)
	}
	if cc < 0 {
		t.Errorf("ingress: containerConcurrency must be set (0 = unbounded, for streams)")
	}
	if len(c.Ports) != 1 {
		t.Errorf("ingress: %d ports, want exactly one", len(c.Ports))
	}
	for _, p := range c.Ports {
		if p.Name != "h2c" || p.ContainerPort != 8080 {
			t.Errorf("ingress: port %q %d, want h2c 8080 (gRPC needs HTTP/2 end to end)", p.Name, p.ContainerPort)
		}
	}
	// TCP probes: the gRPC health service fans out to the functions (see ingress.yaml).
	for name, p := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if p == nil || p.TCPSocket == nil {
			t.Errorf("ingress: %s must be tcpSocket (a grpc probe would wake the functions and fail with them), got %+v", name, p)
		}
	}
	// EXECUTE_URL, STATUS_URL, LIST_URL: the cluster-local address of the right Service.
	want := map[string]string{"EXECUTE_URL": "execute", "STATUS_URL": "status", "LIST_URL": "list"}
	got := map[string]string{}
	for _, e := range c.Env {
		if _, ok := want[e.Name]; ok {
			got[e.Name] = e.Value
		}
	}
	for env, svc := range want {
		if u := "http://" + svc + "." + namespace + ".svc.cluster.local"; got[env] != u {
			t.Errorf("ingress: %s=%q, want %q", env, got[env], u)
		}
		if target, ok := m.services[svc]; !ok {
			t.Errorf("ingress: %s names Service %q, which is not declared", env, svc)
		} else if target.Labels["networking.knative.dev/visibility"] != "cluster-local" {
			t.Errorf("ingress: %s names Service %q, which is not cluster-local", env, svc)
		}
	}
}

func checkResources(t *testing.T, svc string, r corev1.ResourceRequirements) {
	t.Helper()
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := r.Requests[res]
		lim, okLim := r.Limits[res]
		if !okReq || !okLim {
			t.Errorf("Service %q: want both a request and a limit for %s", svc, res)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("Service %q: %s request %s above its limit %s", svc, res, req.String(), lim.String())
		}
	}
}

// TestEventing checks the Broker, the Triggers and the PingSource against the event types
// the functions handle, as read from their source.
func TestEventing(t *testing.T) {
	m := load(t)
	types := requestTypes(t)
	handlers := handledTypes(t)

	b, ok := m.brokers[brokerName]
	if !ok {
		t.Fatalf("no Broker %q", brokerName)
	}
	checkDelivery(t, m, "Broker "+brokerName, b.Spec.Delivery)

	routed := map[string]string{} // type -> trigger
	for name, tr := range m.triggers {
		where := "Trigger " + name
		if tr.Spec.Broker != brokerName {
			t.Errorf("%s: broker %q, want %q", where, tr.Spec.Broker, brokerName)
		}
		var attrs map[string]string
		if tr.Spec.Filter != nil {
			attrs = tr.Spec.Filter.Attributes
		}
		if len(tr.Spec.Filters) != 0 || len(attrs) != 1 || attrs["type"] == "" {
			t.Errorf("%s: want exactly one exact filter on the type attribute, got filter %v filters %v", where, attrs, tr.Spec.Filters)
			continue
		}
		typ := attrs["type"]
		if !types[typ] {
			t.Errorf("%s: type %q is none of the request types of shared/rpcevents", where, typ)
			continue
		}
		if prev, dup := routed[typ]; dup {
			t.Errorf("%s and Trigger %s both route %q: each event would be delivered twice", where, prev, typ)
		}
		routed[typ] = name
		ref := tr.Spec.Subscriber.Ref
		if ref == nil || ref.APIVersion != "serving.knative.dev/v1" || ref.Kind != "Service" || tr.Spec.Subscriber.URI != nil {
			t.Errorf("%s: subscriber must be a ref to a serving.knative.dev/v1 Service, got %+v", where, tr.Spec.Subscriber)
			continue
		}
		if want := handlers[typ]; ref.Name != want {
			t.Errorf("%s: %q goes to %q, but the function that handles it is %q", where, typ, ref.Name, want)
		}
		if _, ok := m.services[ref.Name]; !ok {
			t.Errorf("%s: subscriber Service %q is not declared", where, ref.Name)
		}
		checkDelivery(t, m, where, tr.Spec.Delivery)
		if !reflect.DeepEqual(tr.Spec.Delivery, b.Spec.Delivery) {
			t.Errorf("%s: delivery %+v differs from the Broker's %+v", where, tr.Spec.Delivery, b.Spec.Delivery)
		}
	}
	for typ := range types {
		if _, ok := routed[typ]; !ok && typ != pingType {
			t.Errorf("request type %q has no Trigger", typ)
		}
	}

	if len(m.pingSources) != 1 {
		t.Errorf("%d PingSources, want 1 (the reconciler's clock)", len(m.pingSources))
	}
	for name, p := range m.pingSources {
		ref := p.Spec.Sink.Ref
		want := handlers[pingType]
		if ref == nil || ref.APIVersion != "serving.knative.dev/v1" || ref.Kind != "Service" || ref.Name != want || want == "" {
			t.Errorf("PingSource %s: sink %+v, want a ref to the Service that handles %s (%q)", name, p.Spec.Sink, pingType, want)
		}
	}
}

func checkDelivery(t *testing.T, m *manifests, where string, ds *eventingduckv1.DeliverySpec) {
	t.Helper()
	if ds == nil {
		t.Errorf("%s: no delivery policy", where)
		return
	}
	if ds.Retry == nil || *ds.Retry < 1 {
		t.Errorf("%s: delivery.retry must be at least 1", where)
	}
	if ds.BackoffPolicy == nil || *ds.BackoffPolicy != eventingduckv1.BackoffPolicyExponential || ds.BackoffDelay == nil {
		t.Errorf("%s: want exponential backoff with a backoffDelay", where)
	}
	ref := ds.DeadLetterSink
	if ref == nil || ref.Ref == nil || ref.Ref.Kind != "Service" || ref.Ref.APIVersion != "serving.knative.dev/v1" || ref.Ref.Name != deadLetters {
		t.Errorf("%s: deadLetterSink must be a ref to the Service %q", where, deadLetters)
		return
	}
	if _, ok := m.services[deadLetters]; !ok {
		t.Errorf("%s: dead-letter Service %q is not declared", where, deadLetters)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
