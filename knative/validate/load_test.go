package validate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

// Where things are, relative to this directory.
const (
	knativeDir = ".."    // the manifests
	repoRoot   = "../.." // the main module's source, read as text
	modulePath = "github.com/fleet-ai/ray-executor"
)

// Names the manifests agree on.
const (
	namespace     = "ray-executor"
	configMapName = "ray-executor-config"
	secretName    = "ray-executor-secrets"
	brokerName    = "ray-executor"
	deadLetters   = "dead-letters"
	ingressName   = "ingress"
)

// doc is one YAML document of one manifest file.
type doc struct {
	File    string // relative to knative/, slash-separated
	Index   int    // 0-based position in the file, counting non-empty documents
	Applied bool   // in knative/ itself: what `ko apply -f knative/` applies (not recursive)
	Kind    string // apiVersion + "/" + kind
	Name    string
	NS      string
	JSON    []byte
}

func (d doc) String() string { return fmt.Sprintf("%s#%d %s %q", d.File, d.Index, d.Kind, d.Name) }

// manifests is every object under knative/, decoded strictly into its API type, as written
// (not defaulted).
type manifests struct {
	docs        []doc
	namespaces  map[string]*corev1.Namespace
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	services    map[string]*servingv1.Service
	brokers     map[string]*eventingv1.Broker
	triggers    map[string]*eventingv1.Trigger
	pingSources map[string]*sourcesv1.PingSource
	rules       map[string]*monitoringv1.PrometheusRule
}

var (
	loadOnce   sync.Once
	loaded     *manifests
	loadErrors error
)

// load returns the manifests, failing the test on any file that does not decode.
func load(t *testing.T) *manifests {
	t.Helper()
	loadOnce.Do(func() { loaded, loadErrors = loadDir(knativeDir) })
	if loadErrors != nil {
		t.Fatalf("loading the manifests under knative/:\n%v", loadErrors)
	}
	return loaded
}

// manifestFiles lists the YAML files under dir (recursively, skipping this module),
// sorted as `ko apply -f` / `kubectl apply -f` would take them.
func manifestFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "validate" && filepath.Dir(path) == filepath.Clean(dir) {
				return filepath.SkipDir
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml":
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		case ".json":
			return fmt.Errorf("%s: JSON manifests are applied by ko too but not checked here; use YAML", path)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

func loadDir(dir string) (*manifests, error) {
	files, err := manifestFiles(dir)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no manifests found under %s", dir)
	}
	m := &manifests{
		namespaces:  map[string]*corev1.Namespace{},
		configMaps:  map[string]*corev1.ConfigMap{},
		secrets:     map[string]*corev1.Secret{},
		services:    map[string]*servingv1.Service{},
		brokers:     map[string]*eventingv1.Broker{},
		triggers:    map[string]*eventingv1.Trigger{},
		pingSources: map[string]*sourcesv1.PingSource{},
		rules:       map[string]*monitoringv1.PrometheusRule{},
	}
	var errs []error
	for _, f := range files {
		raw, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			return nil, err
		}
		docs, err := splitDocuments(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		if len(docs) == 0 {
			errs = append(errs, fmt.Errorf("%s: no document", f))
		}
		for i, js := range docs {
			d := doc{File: f, Index: i, Applied: !strings.Contains(f, "/"), JSON: js}
			if err := m.add(&d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", d, err))
				continue
			}
			m.docs = append(m.docs, d)
		}
	}
	return m, errors.Join(errs...)
}

// splitDocuments returns the non-empty documents of a multi-document YAML file as JSON.
func splitDocuments(raw []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var out [][]byte
	for {
		y, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		// YAMLToJSONStrict refuses duplicate keys, which plain YAML would silently merge.
		js, err := yaml.YAMLToJSONStrict(y)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", len(out), err)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
			continue // only comments
		}
		out = append(out, js)
	}
}

// monitoringKind is the Prometheus Operator's alerting rules (knative/monitoring/).
const monitoringKind = "monitoring.coreos.com/v1/PrometheusRule"

// add decodes d strictly (an unknown or misspelt field is an error) into its API type.
func (m *manifests) add(d *doc) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(d.JSON, &head); err != nil {
		return err
	}
	d.Kind, d.Name, d.NS = head.APIVersion+"/"+head.Kind, head.Metadata.Name, head.Metadata.Namespace
	if head.APIVersion == "" || head.Kind == "" || d.Name == "" {
		return fmt.Errorf("apiVersion, kind and metadata.name are required")
	}
	key := d.Name
	switch d.Kind {
	case "v1/Namespace":
		return decodeInto(d, m.namespaces, key)
	case "v1/ConfigMap":
		return decodeInto(d, m.configMaps, key)
	case "v1/Secret":
		return decodeInto(d, m.secrets, key)
	case "serving.knative.dev/v1/Service":
		return decodeInto(d, m.services, key)
	case "eventing.knative.dev/v1/Broker":
		return decodeInto(d, m.brokers, key)
	case "eventing.knative.dev/v1/Trigger":
		return decodeInto(d, m.triggers, key)
	case "sources.knative.dev/v1/PingSource":
		return decodeInto(d, m.pingSources, key)
	case monitoringKind:
		return decodeInto(d, m.rules, key)
	default:
		return fmt.Errorf("kind %s is not validated by knative/validate; add it to manifests.add", d.Kind)
	}
}

func decodeInto[T any](d *doc, into map[string]*T, key string) error {
	if _, dup := into[key]; dup {
		return fmt.Errorf("a second %s named %q", d.Kind, key)
	}
	obj := new(T)
	if err := yaml.UnmarshalStrict(d.JSON, obj); err != nil {
		return err
	}
	into[key] = obj
	return nil
}

// sortedKeys returns a map's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
