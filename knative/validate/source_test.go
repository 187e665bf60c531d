package validate

// Reading the main module's source as text (go/parser, go/ast), never importing it: what
// each binary reads from its environment, the request event types, and which function
// handles which type.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// pingType is what a Knative PingSource sends (rpcevents.TypePing; checked against the source).
const pingType = "dev.knative.sources.ping"

// readerMethods are the config.Reader methods that read one variable, by the kind of value.
var readerMethods = map[string]bool{"String": true, "Int": true, "Bool": true, "Duration": true, "Float": true, "Secret": true}

// goPackage is one parsed package directory (test files excluded).
type goPackage struct {
	dir   string
	name  string
	files []*ast.File
	funcs map[string]*ast.FuncDecl // top-level functions (not methods) by name
}

var (
	pkgMu    sync.Mutex
	pkgCache = map[string]*goPackage{}
)

// parsePackage parses the non-test Go files of dir (relative to the repository root).
func parsePackage(dir string) (*goPackage, error) {
	pkgMu.Lock()
	defer pkgMu.Unlock()
	if p, ok := pkgCache[dir]; ok {
		return p, nil
	}
	entries, err := os.ReadDir(filepath.Join(repoRoot, dir))
	if err != nil {
		return nil, err
	}
	p := &goPackage{dir: dir, funcs: map[string]*ast.FuncDecl{}}
	fset := token.NewFileSet()
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(repoRoot, dir, n), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		if hasIgnoreBuildTag(f) {
			continue
		}
		p.files = append(p.files, f)
		p.name = f.Name.Name
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				p.funcs[fd.Name.Name] = fd
			}
		}
	}
	if len(p.files) == 0 {
		return nil, fmt.Errorf("%s: no Go files", dir)
	}
	pkgCache[dir] = p
	return p, nil
}

// hasIgnoreBuildTag reports a `//go:build ignore`-style file, which is never compiled.
func hasIgnoreBuildTag(f *ast.File) bool {
	for _, cg := range f.Comments {
		if cg.Pos() > f.Package {
			break
		}
		for _, c := range cg.List {
			if strings.HasPrefix(c.Text, "//go:build") && strings.Contains(c.Text, "ignore") {
				return true
			}
		}
	}
	return false
}

// moduleImports maps a file's import names to package directories inside the module.
func moduleImports(f *ast.File) map[string]string {
	out := map[string]string{}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		name := path[strings.LastIndex(path, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		if path == "os" {
			out[name] = "os"
			continue
		}
		if rest, ok := strings.CutPrefix(path, modulePath+"/"); ok {
			out[name] = rest
		}
	}
	return out
}

// envRead is one variable a binary reads, with how it parses it.
type envRead struct {
	Name   string
	Method string // String, Int, Bool, Duration, Float, Secret (or Getenv for os.Getenv)
	Where  string // file:line of the first read
}

// readSet collects what a binary reads: names -> how.
type readSet map[string]envRead

// envReads returns what the binary functions/<bin> reads from its environment: every
// literal name passed to a config.Reader method (Secret(X) also reads X_FILE), os.Getenv or
// os.LookupEnv, or a getenv func(string) string parameter, in functions/<bin>, its cmd/, and
// every module function they call, followed transitively.
func envReads(bin string) (readSet, error) {
	w := &walker{reads: readSet{}, seen: map[string]bool{}}
	for _, dir := range []string{"functions/" + bin, "functions/" + bin + "/cmd"} {
		p, err := parsePackage(dir)
		if err != nil {
			return nil, err
		}
		for _, f := range p.files {
			for _, d := range f.Decls {
				if fd, ok := d.(*ast.FuncDecl); ok {
					w.visit(p, f, fd)
				}
			}
		}
	}
	return w.follow()
}

// funcReads is envReads from the named functions ("shared/records.ReadConfig") alone.
func funcReads(fns ...string) (readSet, error) {
	w := &walker{reads: readSet{}, seen: map[string]bool{}}
	for _, fn := range fns {
		dir, name, _ := strings.Cut(fn, ".")
		w.enqueue(dir, name)
	}
	return w.follow()
}

// follow visits the queued calls, and those they make, until none is left.
func (w *walker) follow() (readSet, error) {
	for len(w.queue) > 0 {
		c := w.queue[0]
		w.queue = w.queue[1:]
		p, err := parsePackage(c.dir)
		if err != nil {
			return nil, err
		}
		fd, f := p.funcs[c.fn], fileOf(p, p.funcs[c.fn])
		if fd == nil {
			continue // a type conversion or a generic helper: nothing to follow
		}
		w.visit(p, f, fd)
	}
	if len(w.errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(w.errs, "\n"))
	}
	return w.reads, nil
}

func fileOf(p *goPackage, fd *ast.FuncDecl) *ast.File {
	if fd == nil {
		return nil
	}
	for _, f := range p.files {
		if f.Pos() <= fd.Pos() && fd.End() <= f.End() {
			return f
		}
	}
	return nil
}

type call struct{ dir, fn string }

type walker struct {
	reads readSet
	seen  map[string]bool
	queue []call
	errs  []string
}

func (w *walker) enqueue(dir, fn string) {
	k := dir + "." + fn
	if !w.seen[k] {
		w.seen[k] = true
		w.queue = append(w.queue, call{dir, fn})
	}
}

// isReaderType reports *config.Reader (or *Reader inside package config).
func isReaderType(expr ast.Expr, pkgName string, imports map[string]string) bool {
	star, ok := expr.(*ast.StarExpr)
	if !ok {
		return false
	}
	switch x := star.X.(type) {
	case *ast.Ident:
		return pkgName == "config" && x.Name == "Reader"
	case *ast.SelectorExpr:
		id, ok := x.X.(*ast.Ident)
		return ok && imports[id.Name] == "shared/config" && x.Sel.Name == "Reader"
	}
	return false
}

// isGetenvType reports func(string) string.
func isGetenvType(expr ast.Expr) bool {
	ft, ok := expr.(*ast.FuncType)
	if !ok || ft.Params == nil || ft.Results == nil || ft.Params.NumFields() != 1 || ft.Results.NumFields() != 1 {
		return false
	}
	isString := func(e ast.Expr) bool { id, ok := e.(*ast.Ident); return ok && id.Name == "string" }
	return isString(ft.Params.List[0].Type) && isString(ft.Results.List[0].Type)
}

func (w *walker) visit(p *goPackage, f *ast.File, fd *ast.FuncDecl) {
	imports := moduleImports(f)
	readers, getenvs := map[string]bool{}, map[string]bool{}
	insideReader := false // a method of config.Reader itself reads names it was given
	if fd.Recv != nil && len(fd.Recv.List) == 1 && isReaderType(fd.Recv.List[0].Type, p.name, imports) {
		insideReader = true
	}
	addParams := func(ft *ast.FuncType) {
		if ft.Params == nil {
			return
		}
		for _, fl := range ft.Params.List {
			for _, n := range fl.Names {
				if isReaderType(fl.Type, p.name, imports) {
					readers[n.Name] = true
				}
				if isGetenvType(fl.Type) {
					getenvs[n.Name] = true
				}
			}
		}
	}
	addParams(fd.Type)
	ast.Inspect(fd, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.FuncLit:
			addParams(x.Type)
		case *ast.AssignStmt: // r := config.NewReader(getenv)
			for i, rhs := range x.Rhs {
				if i >= len(x.Lhs) {
					break
				}
				ce, ok := rhs.(*ast.CallExpr)
				if !ok {
					continue
				}
				id, ok := x.Lhs[i].(*ast.Ident)
				if !ok {
					continue
				}
				switch fn := ce.Fun.(type) {
				case *ast.SelectorExpr:
					if pk, ok := fn.X.(*ast.Ident); ok && imports[pk.Name] == "shared/config" && fn.Sel.Name == "NewReader" {
						readers[id.Name] = true
					}
				case *ast.Ident:
					if p.name == "config" && fn.Name == "NewReader" {
						readers[id.Name] = true
					}
				}
			}
		case *ast.CallExpr:
			w.call(p, f, fd, x, imports, readers, getenvs, insideReader)
		}
		return true
	})
}

func (w *walker) call(p *goPackage, f *ast.File, fd *ast.FuncDecl, x *ast.CallExpr, imports map[string]string, readers, getenvs map[string]bool, insideReader bool) {
	pos := func() string {
		return fmt.Sprintf("%s/%s", p.dir, fd.Name.Name)
	}
	literal := func() (string, bool) {
		if len(x.Args) == 0 {
			return "", false
		}
		bl, ok := x.Args[0].(*ast.BasicLit)
		if !ok || bl.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(bl.Value)
		return s, err == nil
	}
	record := func(name, method string) {
		if _, ok := w.reads[name]; !ok {
			w.reads[name] = envRead{Name: name, Method: method, Where: pos()}
		}
	}
	switch fn := x.Fun.(type) {
	case *ast.SelectorExpr:
		id, ok := fn.X.(*ast.Ident)
		if !ok {
			return
		}
		switch {
		case readers[id.Name] && readerMethods[fn.Sel.Name]:
			name, ok := literal()
			if !ok {
				if !insideReader {
					w.errs = append(w.errs, fmt.Sprintf("%s: %s.%s with a non-literal name: the check cannot see which variable it reads", pos(), id.Name, fn.Sel.Name))
				}
				return
			}
			record(name, fn.Sel.Name)
			if fn.Sel.Name == "Secret" {
				record(name+"_FILE", "String")
			}
		case imports[id.Name] == "os" && (fn.Sel.Name == "Getenv" || fn.Sel.Name == "LookupEnv"):
			if name, ok := literal(); ok {
				record(name, "String")
			} else {
				w.errs = append(w.errs, fmt.Sprintf("%s: os.%s with a non-literal name", pos(), fn.Sel.Name))
			}
		case imports[id.Name] != "" && imports[id.Name] != "os":
			w.enqueue(imports[id.Name], fn.Sel.Name)
		}
	case *ast.Ident:
		switch {
		case getenvs[fn.Name]:
			if name, ok := literal(); ok {
				record(name, "String")
			} else if !insideReader && p.name != "config" {
				w.errs = append(w.errs, fmt.Sprintf("%s: %s(...) with a non-literal name", pos(), fn.Name))
			}
		case p.funcs[fn.Name] != nil:
			w.enqueue(p.dir, fn.Name)
		}
	}
}

var (
	binOnce sync.Once
	binList []string
	binErr  error
)

// notDeployed are functions/<name>/cmd main packages that are not Knative deployables:
// functions/framework runs execute, status and list under the Functions Framework
// (funcframework, Google's buildpacks), never as a Knative Service; functions/rexctl is the
// CLI, a client of the ingress that people run.
var notDeployed = map[string]bool{"framework": true, "rexctl": true}

// binaries lists the deployables: functions/<name> with a main package in cmd/.
func binaries(t *testing.T) []string {
	t.Helper()
	binOnce.Do(func() {
		entries, err := os.ReadDir(filepath.Join(repoRoot, "functions"))
		if err != nil {
			binErr = err
			return
		}
		for _, e := range entries {
			if !e.IsDir() || notDeployed[e.Name()] {
				continue
			}
			if p, err := parsePackage("functions/" + e.Name() + "/cmd"); err == nil && p.name == "main" {
				binList = append(binList, e.Name())
			}
		}
		sort.Strings(binList)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	if len(binList) == 0 {
		t.Fatal("no functions/<name>/cmd main packages found")
	}
	return binList
}

// requestTypes returns the request event types of shared/rpcevents/rpcevents.go: every
// constant named Type... except TypePrefix, by value.
func requestTypes(t *testing.T) map[string]bool {
	t.Helper()
	consts := rpcConsts(t)
	out := map[string]bool{}
	for name, v := range consts {
		if strings.HasPrefix(name, "Type") && name != "TypePrefix" {
			out[v] = true
		}
	}
	if consts["TypePing"] != pingType {
		t.Fatalf("rpcevents.TypePing = %q, this test expects %q", consts["TypePing"], pingType)
	}
	return out
}

// rpcConsts returns the string constants of shared/rpcevents/rpcevents.go by name.
func rpcConsts(t *testing.T) map[string]string {
	t.Helper()
	consts, err := stringConsts("shared/rpcevents/rpcevents.go")
	if err != nil {
		t.Fatal(err)
	}
	return consts
}

// stringConsts evaluates the string constants of one file (literals, other constants of
// the file, and + between them).
func stringConsts(file string) (map[string]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(repoRoot, file), nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	var eval func(e ast.Expr) (string, bool)
	eval = func(e ast.Expr) (string, bool) {
		switch x := e.(type) {
		case *ast.BasicLit:
			if x.Kind != token.STRING {
				return "", false
			}
			s, err := strconv.Unquote(x.Value)
			return s, err == nil
		case *ast.Ident:
			s, ok := out[x.Name]
			return s, ok
		case *ast.BinaryExpr:
			if x.Op != token.ADD {
				return "", false
			}
			a, ok1 := eval(x.X)
			b, ok2 := eval(x.Y)
			return a + b, ok1 && ok2
		case *ast.ParenExpr:
			return eval(x.X)
		}
		return "", false
	}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if i < len(vs.Values) {
					if v, ok := eval(vs.Values[i]); ok {
						out[n.Name] = v
					}
				}
			}
		}
	}
	return out, nil
}

// handledTypes maps each request type to the function that handles it, from the
// srv.Handle(rpcevents.TypeX, ...) calls in functions/<name>.
func handledTypes(t *testing.T) map[string]string {
	t.Helper()
	types, consts := requestTypes(t), rpcConsts(t)
	out := map[string]string{}
	for _, bin := range binaries(t) {
		p, err := parsePackage("functions/" + bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range p.files {
			imports := moduleImports(f)
			ast.Inspect(f, func(n ast.Node) bool {
				ce, ok := n.(*ast.CallExpr)
				if !ok || len(ce.Args) == 0 {
					return true
				}
				sel, ok := ce.Fun.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Handle" {
					return true
				}
				arg, ok := ce.Args[0].(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if pk, ok := arg.X.(*ast.Ident); !ok || imports[pk.Name] != "shared/rpcevents" {
					return true
				}
				v, ok := consts[arg.Sel.Name]
				if !ok || !types[v] {
					t.Errorf("functions/%s handles rpcevents.%s, which is no request type", bin, arg.Sel.Name)
					return true
				}
				if prev, dup := out[v]; dup && prev != bin {
					t.Errorf("%q is handled by both %s and %s", v, prev, bin)
				}
				out[v] = bin
				return true
			})
		}
	}
	for typ := range types {
		if out[typ] == "" {
			t.Errorf("request type %q is handled by no function (no srv.Handle(rpcevents.Type..., ...) found)", typ)
		}
	}
	return out
}

// TestSourceParsing checks that reading the source finds what it must, so that the
// cross-checks below cannot pass by finding nothing.
func TestSourceParsing(t *testing.T) {
	bins := binaries(t)
	if want := []string{"execute", "ingress", "list", "status"}; strings.Join(bins, ",") != strings.Join(want, ",") {
		t.Errorf("binaries %v, want %v (a new deployable needs its manifest and this test updated)", bins, want)
	}
	handlers := handledTypes(t)
	// The routing the brief and specs/cloudevents.md describe; the source is the authority,
	// this guards the parser.
	want := map[string]string{
		"fleet.ray_executor.v1.ExecuteDeliberation":              "execute",
		"fleet.ray_executor.v1.ExecuteBacklogReviewDeliberation": "execute",
		"fleet.ray_executor.v1.CancelDeliberation":               "execute",
		"fleet.ray_executor.v1.GetDeliberationStatus":            "status",
		"fleet.ray_executor.v1.GetActiveJobs":                    "list",
		"fleet.ray_executor.v1.GetStatus":                        "list",
		"fleet.ray_executor.v1.Reconcile":                        "list",
		pingType:                                                 "list",
	}
	for typ, fn := range want {
		if handlers[typ] != fn {
			t.Errorf("%s: handled by %q in the source, expected %q", typ, handlers[typ], fn)
		}
	}
	if len(handlers) != len(want) {
		t.Errorf("source handles %d types, expected %d: %v", len(handlers), len(want), handlers)
	}
	for _, bin := range bins {
		reads, err := envReads(bin)
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		// Anchors every binary reads through shared/config.ReadServing: proof that calls
		// into shared packages are followed.
		for _, name := range []string{"PORT", "LOG_LEVEL", "DRAIN_TIMEOUT", "CE_SOURCE"} {
			if _, ok := reads[name]; !ok {
				t.Errorf("%s: %s not found among its reads %v", bin, name, sortedKeys(reads))
			}
		}
		if bin == "execute" || bin == "list" { // they deploy the executor; status never asks Ray
			for _, name := range []string{"RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_FILE"} {
				if _, ok := reads[name]; !ok {
					t.Errorf("%s: %s not found (shared/config.ReadRay not followed?)", bin, name)
				}
			}
		}
	}
}
