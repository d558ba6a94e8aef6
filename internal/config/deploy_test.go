package config_test

// There is no Docker engine in CI, so these tests read the deployment files
// (Dockerfile, docker-compose.yml, .dockerignore, DOCKER.md, README.md) and
// check them against the Config struct: every variable they set exists, the
// values they set are accepted by config.Load, the ports they expose or
// publish are exactly the ones that configuration listens on, and the docs
// list every variable.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/duskchat/dusk-relay/internal/config"
)

// Relay ports must stay inside the IANA dynamic range, which is what
// firewalls and the docs assume.
const (
	dynamicLo = 49152
	dynamicHi = 65535
	// The compose file publishes a reduced range (each published port costs
	// Docker a proxy and NAT rules); anything near the full range belongs
	// to host networking.
	maxComposeRange = 1024
	// The binary path HEALTHCHECK, ENTRYPOINT and compose rely on.
	imageBinary = "/usr/local/bin/dusk-relay"
)

// repoRoot is found from this file's location, not the working directory
// (loadWith changes directory to keep a stray .env out).
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found at %s: %v", root, err)
	}
	return root
}

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return string(b)
}

// ---- Dockerfile parsing -----------------------------------------------------

type dockerInstr struct {
	line int
	cmd  string // upper case
	args string
}

type dockerStage struct {
	image string // after ARG substitution
	name  string
	instr []dockerInstr
}

type dockerfile struct {
	args   map[string]string // global ARG defaults (before the first FROM)
	stages []*dockerStage
}

func parseDockerfile(t *testing.T, text string) *dockerfile {
	t.Helper()
	df := &dockerfile{args: map[string]string{}}
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, rest, _ := strings.Cut(s, " ")
		in := dockerInstr{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(rest)}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			var st dockerStage
			for i := 0; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case st.image == "":
					st.image = substArgs(f[i], df.args)
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					st.name = f[i+1]
					i++
				}
			}
			df.stages = append(df.stages, &st)
		case len(df.stages) == 0:
			if in.cmd == "ARG" {
				k, v, _ := strings.Cut(in.args, "=")
				df.args[k] = v
			}
		default:
			st := df.stages[len(df.stages)-1]
			st.instr = append(st.instr, in)
		}
	}
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimRight(raw, " \t\r")
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // comments (also inside continuations, as Docker does)
		}
		if cur.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = i + 1
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\"))
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(line)
		flush()
	}
	if cur.Len() != 0 {
		t.Fatalf("Dockerfile: line %d: continuation runs past the end of the file", start)
	}
	if len(df.stages) == 0 {
		t.Fatal("Dockerfile: no FROM")
	}
	return df
}

var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func substArgs(s string, args map[string]string) string {
	return argRef.ReplaceAllStringFunc(s, func(m string) string {
		name := argRef.FindStringSubmatch(m)[1]
		if v, ok := args[name]; ok {
			return v
		}
		return m
	})
}

func (s *dockerStage) all(cmd string) []dockerInstr {
	var out []dockerInstr
	for _, in := range s.instr {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s *dockerStage) last(cmd string) (dockerInstr, bool) {
	all := s.all(cmd)
	if len(all) == 0 {
		return dockerInstr{}, false
	}
	return all[len(all)-1], true
}

// env returns the ENV variables set in the stage, in both ENV forms
// (`ENV K=V K2="V 2"` and the legacy `ENV K V`).
func (s *dockerStage) env(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, in := range s.all("ENV") {
		words, err := shellWords(in.args)
		if err != nil {
			t.Fatalf("Dockerfile line %d: ENV: %v", in.line, err)
		}
		if len(words) == 0 {
			t.Fatalf("Dockerfile line %d: empty ENV", in.line)
		}
		if !strings.Contains(words[0], "=") {
			out[words[0]] = strings.Join(words[1:], " ")
			continue
		}
		for _, w := range words {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				t.Fatalf("Dockerfile line %d: ENV word %q has no =", in.line, w)
			}
			out[k] = v
		}
	}
	return out
}

// shellWords splits like Docker's ENV parser: whitespace separates words,
// quotes group, backslash escapes.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote, inWord = c, true
		case c == '\\' && quote != '\'' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// execForm parses a JSON array argument (exec form); shell form is an error.
func execForm(t *testing.T, what, s string) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &out); err != nil || len(out) == 0 {
		t.Fatalf("%s must be in exec form (a JSON array, no shell in the image), got %q", what, s)
	}
	return out
}

// flagValue returns --name=value from an instruction's leading flags.
func flagValue(args, name string) (string, bool) {
	for _, f := range strings.Fields(args) {
		if !strings.HasPrefix(f, "--") {
			break
		}
		if v, ok := strings.CutPrefix(f, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// withoutFlags drops an instruction's leading --flags.
func withoutFlags(args string) []string {
	f := strings.Fields(args)
	for len(f) > 0 && strings.HasPrefix(f[0], "--") {
		f = f[1:]
	}
	return f
}

// ---- ports -----------------------------------------------------------------

// portSpec is one protocol and a port or port range, e.g. udp 49152-65535.
type portSpec struct {
	proto  string
	lo, hi int
}

func (p portSpec) String() string {
	if p.lo == p.hi {
		return fmt.Sprintf("%d/%s", p.lo, p.proto)
	}
	return fmt.Sprintf("%d-%d/%s", p.lo, p.hi, p.proto)
}

func parsePortRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = strconv.Atoi(a); err != nil {
		return 0, 0, fmt.Errorf("bad port %q", s)
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(b); err != nil {
			return 0, 0, fmt.Errorf("bad port range %q", s)
		}
	}
	if lo < 1 || hi > 65535 || hi < lo {
		return 0, 0, fmt.Errorf("bad port range %q", s)
	}
	return lo, hi, nil
}

// parseExpose parses one EXPOSE word: 4001, 4001/tcp, 49152-65535/udp.
func parseExpose(s string) (portSpec, error) {
	ports, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return portSpec{}, fmt.Errorf("bad protocol in %q", s)
	}
	lo, hi, err := parsePortRange(ports)
	return portSpec{proto: proto, lo: lo, hi: hi}, err
}

// published is one compose short-syntax port: [ip:]host:container[/proto].
type published struct {
	hostIP    string
	host      portSpec
	container portSpec
}

func parsePublished(s string) (published, error) {
	spec, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "tcp"
	}
	parts := strings.Split(spec, ":")
	var p published
	switch len(parts) {
	case 2:
	case 3:
		p.hostIP = parts[0]
		parts = parts[1:]
	default:
		// A bare container port would be published on a random host port,
		// which clients cannot be told about.
		return p, fmt.Errorf("port %q: want [ip:]host:container[/proto]", s)
	}
	var err error
	p.host.proto, p.container.proto = proto, proto
	if p.host.lo, p.host.hi, err = parsePortRange(parts[0]); err != nil {
		return p, fmt.Errorf("port %q: %w", s, err)
	}
	if p.container.lo, p.container.hi, err = parsePortRange(parts[1]); err != nil {
		return p, fmt.Errorf("port %q: %w", s, err)
	}
	if proto != "tcp" && proto != "udp" {
		return p, fmt.Errorf("port %q: bad protocol", s)
	}
	return p, nil
}

// wantPorts is what a relay with this configuration listens on and must be
// reachable at: libp2p TCP, TURN UDP and TCP, the relay range on UDP, and
// the metrics port when it is bound beyond loopback.
func wantPorts(t *testing.T, c *config.Config) []string {
	t.Helper()
	want := []string{
		portSpec{"tcp", int(c.Port), int(c.Port)}.String(),
		portSpec{"udp", int(c.UDPPort), int(c.UDPPort)}.String(),
		portSpec{"tcp", int(c.TCPPort), int(c.TCPPort)}.String(),
		portSpec{"udp", int(c.PortRangeStart), int(c.PortRangeEnd)}.String(),
	}
	if mp, ok := metricsPortBeyondLoopback(t, c); ok {
		want = append(want, portSpec{"tcp", mp, mp}.String())
	}
	slices.Sort(want)
	return slices.Compact(want)
}

// metricsPortBeyondLoopback returns the metrics port when DUSK_METRICS_ADDR
// binds something other than loopback (only then is exposing it useful).
func metricsPortBeyondLoopback(t *testing.T, c *config.Config) (int, bool) {
	t.Helper()
	if !c.MetricsEnabled() {
		return 0, false
	}
	host, port, err := splitHostPortNum(c.MetricsAddr)
	if err != nil {
		t.Fatalf("DUSK_METRICS_ADDR=%q: %v", c.MetricsAddr, err)
	}
	if host == "localhost" {
		return port, false
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		return port, false
	}
	return port, true
}

func splitHostPortNum(addr string) (string, int, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("no port in %q", addr)
	}
	p, err := strconv.Atoi(addr[i+1:])
	if err != nil {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return strings.Trim(addr[:i], "[]"), p, nil
}

// loadWith runs config.Load with exactly env set (every other Config
// variable unset) and fails the test if the configuration is rejected.
func loadWith(t *testing.T, what string, env map[string]string) *config.Config {
	t.Helper()
	for _, n := range append(config.Names(), "RUST_LOG", "XDG_DATA_HOME") {
		t.Setenv(n, "") // empty counts as unset; restored after the test
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	t.Chdir(t.TempDir()) // no stray .env
	c, err := config.Load()
	if err != nil {
		t.Fatalf("%s: config.Load rejects its environment: %v", what, err)
	}
	return c
}

func checkKnownVars(t *testing.T, what string, env map[string]string) {
	t.Helper()
	known := config.Names()
	for k := range env {
		if !slices.Contains(known, k) {
			t.Errorf("%s sets %s, which is not a Config variable (config.Names())", what, k)
		}
	}
}

func checkRelayRange(t *testing.T, what string, c *config.Config) {
	t.Helper()
	if c.PortRangeStart < dynamicLo || c.PortRangeEnd > dynamicHi || c.PortRangeEnd < c.PortRangeStart {
		t.Errorf("%s: relay range %d-%d is not within %d-%d", what, c.PortRangeStart, c.PortRangeEnd, dynamicLo, dynamicHi)
	}
}

// ---- Dockerfile ------------------------------------------------------------

func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	final := df.stages[len(df.stages)-1]

	// The builder's Go is the one go.mod asks for (major.minor).
	goMod := readRepoFile(t, "go.mod")
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(goMod)
	if m == nil {
		t.Fatal("go.mod: no go directive")
	}
	var builder *dockerStage
	for _, st := range df.stages[:len(df.stages)-1] {
		if strings.HasPrefix(st.image, "golang:") {
			builder = st
		}
	}
	if builder == nil {
		t.Fatalf("Dockerfile: no golang builder stage before the final stage (stages: %v)", stageImages(df))
	}
	if !regexp.MustCompile(`^golang:` + regexp.QuoteMeta(m[1]) + `(\.\d+)?(-|$)`).MatchString(builder.image) {
		t.Errorf("builder image %q does not match go.mod's go %s", builder.image, m[1])
	}

	// The build: static, trimmed, version stamped, output copied into the
	// final stage at the path ENTRYPOINT and HEALTHCHECK use.
	var build dockerInstr
	for _, in := range builder.all("RUN") {
		if strings.Contains(in.args, "go build") {
			build = in
		}
	}
	if build.cmd == "" {
		t.Fatal("builder stage has no RUN ... go build")
	}
	cgoOff := regexp.MustCompile(`(^|\s)CGO_ENABLED=0\s`).MatchString(build.args) ||
		builder.env(t)["CGO_ENABLED"] == "0"
	if !cgoOff {
		t.Errorf("Dockerfile line %d: go build without CGO_ENABLED=0 (distroless/static has no libc)", build.line)
	}
	for _, want := range []string{"-trimpath", "-X main.version=", "./cmd/dusk-relay"} {
		if !strings.Contains(build.args, want) {
			t.Errorf("Dockerfile line %d: go build lacks %q", build.line, want)
		}
	}
	out := regexp.MustCompile(`\s-o\s+(\S+)`).FindStringSubmatch(build.args)
	if out == nil {
		t.Fatalf("Dockerfile line %d: go build has no -o", build.line)
	}
	var binDst string
	for _, in := range final.all("COPY") {
		from, _ := flagValue(in.args, "from")
		f := withoutFlags(in.args)
		if from == builder.name && len(f) == 2 && f[0] == out[1] {
			binDst = f[1]
		}
	}
	if binDst != imageBinary {
		t.Errorf("final stage copies %s from %q to %q, want %s", out[1], builder.name, binDst, imageBinary)
	}

	// Runtime image: minimal, non-root.
	if !strings.HasPrefix(final.image, "gcr.io/distroless/static") {
		t.Errorf("final image %q: want gcr.io/distroless/static (static binary, no shell)", final.image)
	}
	user, ok := final.last("USER")
	if !ok {
		t.Fatal("final stage has no USER: the relay would run as root")
	}
	uid, _, _ := strings.Cut(user.args, ":")
	if uid == "" || uid == "0" || uid == "root" {
		t.Errorf("final stage USER %q is root", user.args)
	}

	// ENTRYPOINT and HEALTHCHECK in exec form; the healthcheck is the
	// binary's own subcommand (no shell, no curl in the image).
	ep, ok := final.last("ENTRYPOINT")
	if !ok {
		t.Fatal("final stage has no ENTRYPOINT")
	}
	if got := execForm(t, "ENTRYPOINT", ep.args); !reflect.DeepEqual(got, []string{imageBinary}) {
		t.Errorf("ENTRYPOINT = %q, want [%q]", got, imageBinary)
	}
	hc, ok := final.last("HEALTHCHECK")
	if !ok {
		t.Fatal("final stage has no HEALTHCHECK")
	}
	hcArgs := strings.Join(withoutFlags(hc.args), " ")
	cmdArgs, isCmd := strings.CutPrefix(hcArgs, "CMD ")
	if !isCmd {
		t.Fatalf("HEALTHCHECK %q: want CMD [...]", hc.args)
	}
	if got := execForm(t, "HEALTHCHECK CMD", cmdArgs); !reflect.DeepEqual(got, []string{imageBinary, "healthcheck"}) {
		t.Errorf("HEALTHCHECK CMD = %q, want [%q %q]", got, imageBinary, "healthcheck")
	}

	// State: a /data volume, owned by the runtime user (the image has no
	// shell to chown it at start), holding DUSK_DATA_DIR.
	vol, ok := final.last("VOLUME")
	if !ok || !slices.Contains(strings.Fields(strings.Trim(vol.args, `[]"`)), "/data") {
		t.Errorf("final stage VOLUME = %q, want /data", vol.args)
	}
	dataOwned := false
	for _, in := range final.all("COPY") {
		owner, _ := flagValue(in.args, "chown")
		f := withoutFlags(in.args)
		if len(f) == 2 && f[1] == "/data" && strings.HasPrefix(owner+":", uid+":") {
			dataOwned = true
		}
	}
	if !dataOwned {
		t.Errorf("final stage: no COPY --chown=%s:... <dir> /data (the volume mount point must be writable by USER %s)", uid, uid)
	}

	// ENV: only Config variables, values config.Load accepts, data dir in
	// the volume.
	env := final.env(t)
	checkKnownVars(t, "Dockerfile ENV", env)
	if dd := env["DUSK_DATA_DIR"]; dd != "/data" && !strings.HasPrefix(dd, "/data/") {
		t.Errorf("Dockerfile ENV DUSK_DATA_DIR = %q, want a path under the /data volume", dd)
	}
	run := map[string]string{"DUSK_TURN_PUBLIC_IP": "203.0.113.7"} // what an operator adds
	for k, v := range env {
		run[k] = v
	}
	c := loadWith(t, "Dockerfile ENV", run)
	if c.DataDir != env["DUSK_DATA_DIR"] {
		t.Errorf("loaded DataDir = %q, want %q", c.DataDir, env["DUSK_DATA_DIR"])
	}

	// EXPOSE: exactly the ports this configuration listens on.
	var exposed []string
	for _, in := range final.all("EXPOSE") {
		for _, w := range strings.Fields(in.args) {
			p, err := parseExpose(w)
			if err != nil {
				t.Fatalf("Dockerfile line %d: EXPOSE: %v", in.line, err)
			}
			exposed = append(exposed, p.String())
		}
	}
	slices.Sort(exposed)
	if want := wantPorts(t, c); !slices.Equal(exposed, want) {
		t.Errorf("EXPOSE %v, want %v (the ports of the image's configuration)", exposed, want)
	}
	checkRelayRange(t, "Dockerfile", c)
}

func stageImages(df *dockerfile) []string {
	var out []string
	for _, s := range df.stages {
		out = append(out, s.image)
	}
	return out
}

// ---- .dockerignore ---------------------------------------------------------

// ignored reports whether the .dockerignore patterns exclude path (slash
// separated, relative to the context). A pattern excludes a directory and
// everything below it; `**/` matches any number of leading directories;
// the last matching pattern wins (`!` re-includes).
func ignored(patterns []string, path string) bool {
	parts := strings.Split(path, "/")
	res := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(strings.TrimPrefix(p, "!"), "/")
		anywhere := strings.HasPrefix(p, "**/")
		p = strings.TrimPrefix(p, "**/")
		hit := false
		for first := 0; first < len(parts) && !hit; first++ {
			if first > 0 && !anywhere {
				break
			}
			for end := first + 1; end <= len(parts) && !hit; end++ {
				ok, _ := filepath.Match(p, strings.Join(parts[first:end], "/"))
				hit = ok
			}
		}
		if hit {
			res = !neg
		}
	}
	return res
}

func TestDockerignore(t *testing.T) {
	var patterns []string
	for _, l := range strings.Split(readRepoFile(t, ".dockerignore"), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	// Self-check of the matcher, so a broken matcher cannot pass the
	// assertions below vacuously.
	if !ignored([]string{"**/*.test"}, "internal/x/x.test") || ignored([]string{"/keypair"}, "internal/keypair/k.go") ||
		!ignored([]string{".git"}, ".git/HEAD") || ignored([]string{".git", "!.git"}, ".git/HEAD") {
		t.Fatal("dockerignore matcher is broken")
	}
	// The build needs these (a pattern like `keypair` without the leading
	// slash would, for instance, drop a Go package of that name).
	root := repoRoot(t)
	need := []string{"go.mod", "go.sum", "cmd/dusk-relay/main.go"}
	err := filepath.WalkDir(filepath.Join(root, "internal"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			rel, _ := filepath.Rel(root, p)
			need = append(need, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range need {
		if ignored(patterns, p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
	// Secrets, local state and history must not enter the build context.
	for _, p := range []string{".git/config", ".env", "relay.env", "data/dusk-relay/keypair", "keypair", "turn_secret", "directory.sqlite3", "dusk-relay"} {
		if !ignored(patterns, p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
}

// ---- docker-compose.yml ----------------------------------------------------

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Build struct {
		Context string `yaml:"context"`
	} `yaml:"build"`
	Image       string            `yaml:"image"`
	Restart     string            `yaml:"restart"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	NetworkMode string            `yaml:"network_mode"`
	Healthcheck struct {
		Test    []string `yaml:"test"`
		Disable bool     `yaml:"disable"`
	} `yaml:"healthcheck"`
	Ulimits struct {
		Nofile struct {
			Soft int `yaml:"soft"`
			Hard int `yaml:"hard"`
		} `yaml:"nofile"`
	} `yaml:"ulimits"`
	Logging struct {
		Driver  string            `yaml:"driver"`
		Options map[string]string `yaml:"options"`
	} `yaml:"logging"`
}

// missingVarError is Compose's refusal for ${NAME:?message}.
type missingVarError struct{ name, msg string }

func (e *missingVarError) Error() string {
	return fmt.Sprintf("required variable %s is missing a value: %s", e.name, e.msg)
}

// interpolate applies Compose variable substitution: $$, $NAME, ${NAME},
// ${NAME:-default}, ${NAME-default}, ${NAME:?msg}, ${NAME?msg},
// ${NAME:+alt}, ${NAME+alt}. Nested substitutions are not used here and
// are rejected.
func interpolate(s string, env map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '$' {
			b.WriteByte(s[i])
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i += 2
			continue
		}
		if i+1 < len(s) && s[i+1] == '{' {
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("unclosed ${ in %q", s)
			}
			expr := s[i+2 : i+2+end]
			if strings.Contains(expr, "$") {
				return "", fmt.Errorf("nested substitution in %q", s)
			}
			v, err := expandVar(expr, env)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			i += 2 + end + 1
			continue
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= 'a' && s[j] <= 'z' || j > i+1 && s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i+1 {
			return "", fmt.Errorf("lone $ in %q (write $$)", s)
		}
		b.WriteString(env[s[i+1:j]])
		i = j
	}
	return b.String(), nil
}

var varExpr = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$`)

func expandVar(expr string, env map[string]string) (string, error) {
	m := varExpr.FindStringSubmatch(expr)
	if m == nil {
		return "", fmt.Errorf("bad substitution ${%s}", expr)
	}
	name, op, arg := m[1], m[2], m[3]
	v, set := env[name]
	if strings.HasPrefix(op, ":") {
		set = v != "" // the colon forms treat empty as unset
	}
	switch strings.TrimPrefix(op, ":") {
	case "":
		return v, nil
	case "-":
		if set {
			return v, nil
		}
		return arg, nil
	case "?":
		if set {
			return v, nil
		}
		return "", &missingVarError{name: name, msg: arg}
	default: // "+"
		if set {
			return arg, nil
		}
		return "", nil
	}
}

// composeRun is the service as Compose would start it with the given
// host environment (.env): interpolated environment and ports.
type composeRun struct {
	env   map[string]string
	ports []published
}

func (svc composeService) resolve(hostEnv map[string]string) (composeRun, error) {
	r := composeRun{env: map[string]string{}}
	for k, raw := range svc.Environment {
		v, err := interpolate(raw, hostEnv)
		if err != nil {
			return r, fmt.Errorf("environment %s: %w", k, err)
		}
		r.env[k] = v
	}
	for _, raw := range svc.Ports {
		v, err := interpolate(raw, hostEnv)
		if err != nil {
			return r, fmt.Errorf("ports: %w", err)
		}
		p, err := parsePublished(v)
		if err != nil {
			return r, err
		}
		r.ports = append(r.ports, p)
	}
	return r, nil
}

func loadCompose(t *testing.T) composeService {
	t.Helper()
	var cf composeFile
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "docker-compose.yml")), &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	svc, ok := cf.Services["dusk-relay"]
	if !ok {
		t.Fatalf("docker-compose.yml: no service dusk-relay (services: %v)", keys(cf.Services))
	}
	if svc.Build.Context != "." {
		t.Errorf("compose build.context = %q, want .", svc.Build.Context)
	}
	if svc.Image == "" {
		t.Error("compose: no image name (docker compose build would tag a random one)")
	}
	if svc.Restart != "unless-stopped" {
		t.Errorf("compose restart = %q, want unless-stopped", svc.Restart)
	}
	named := false
	for _, v := range svc.Volumes {
		src, dst, _ := strings.Cut(v, ":")
		if dst == "/data" && !strings.ContainsAny(src, "/.~") {
			if _, ok := cf.Volumes[src]; !ok {
				t.Errorf("compose: volume %q mounted at /data is not declared under top-level volumes", src)
			}
			named = true
		}
	}
	if !named {
		t.Errorf("compose volumes %v: want a named volume at /data", svc.Volumes)
	}
	return svc
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// requiredComposeVars are the variables without which `docker compose up`
// must refuse to start (a relay with a guessed public IP hands clients
// unreachable TURN addresses).
var requiredComposeVars = []string{"DUSK_TURN_PUBLIC_IP", "DUSK_TURN_SECRET"}

func TestComposeRequiresPublicIPAndSecret(t *testing.T) {
	svc := loadCompose(t)
	full := map[string]string{"DUSK_TURN_PUBLIC_IP": "203.0.113.7", "DUSK_TURN_SECRET": "0123456789abcdef"}
	if _, err := svc.resolve(full); err != nil {
		t.Fatalf("compose with both required variables: %v", err)
	}
	for _, name := range requiredComposeVars {
		raw := svc.Environment[name]
		if !regexp.MustCompile(`^\$\{` + name + `:\?[^}]+\}$`).MatchString(raw) {
			t.Errorf("compose environment %s = %q, want ${%s:?<message>}", name, raw, name)
		}
		for _, val := range []string{"", "absent"} {
			env := maps(full)
			if val == "absent" {
				delete(env, name)
			} else {
				env[name] = val
			}
			_, err := svc.resolve(env)
			var missing *missingVarError
			if !errors.As(err, &missing) || missing.name != name || missing.msg == "" {
				t.Errorf("compose with %s %s: err = %v, want a required-variable error naming it with a message", name, val, err)
			}
		}
	}
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestComposeMatchesConfig(t *testing.T) {
	svc := loadCompose(t)
	checkKnownVars(t, "docker-compose.yml environment", svc.Environment)

	if svc.NetworkMode != "" {
		t.Fatalf("compose network_mode = %q: the default file publishes ports; host networking is the documented, commented-out variant", svc.NetworkMode)
	}
	if got, want := svc.Healthcheck.Test, []string{"CMD", imageBinary, "healthcheck"}; svc.Healthcheck.Disable || !reflect.DeepEqual(got, want) {
		t.Errorf("compose healthcheck.test = %q (disable %v), want %q", got, svc.Healthcheck.Disable, want)
	}
	if svc.Logging.Driver == "" || svc.Logging.Options["max-size"] == "" {
		t.Errorf("compose logging = %+v, want a driver with max-size (unbounded logs fill the disk)", svc.Logging)
	}

	base := map[string]string{"DUSK_TURN_PUBLIC_IP": "203.0.113.7", "DUSK_TURN_SECRET": "0123456789abcdef"}
	scenarios := []struct {
		name string
		host map[string]string
	}{
		{"defaults", nil},
		// An operator moving every port in .env: published ports follow.
		{"ports moved", map[string]string{
			"DUSK_RELAY_PORT": "4101", "DUSK_TURN_UDP_PORT": "3479", "DUSK_TURN_TCP_PORT": "5349",
			"DUSK_TURN_PORT_RANGE_START": "50000", "DUSK_TURN_PORT_RANGE_END": "50199",
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			host := maps(base)
			for k, v := range sc.host {
				host[k] = v
			}
			run, err := svc.resolve(host)
			if err != nil {
				t.Fatal(err)
			}
			c := loadWith(t, "compose environment", run.env)
			for k, v := range sc.host {
				if run.env[k] != v {
					t.Errorf("compose: host %s=%s does not reach the container (got %q)", k, v, run.env[k])
				}
			}
			if c.PublicIP != base["DUSK_TURN_PUBLIC_IP"] || c.PublicIPGuessed || c.Secret != base["DUSK_TURN_SECRET"] {
				t.Errorf("compose: loaded PublicIP %q (guessed %v), secret set %v; want the operator's values",
					c.PublicIP, c.PublicIPGuessed, c.Secret == base["DUSK_TURN_SECRET"])
			}
			if dd := c.DataDir; dd != "/data" && !strings.HasPrefix(dd, "/data/") {
				t.Errorf("compose: DUSK_DATA_DIR %q is outside the /data volume", dd)
			}
			checkRelayRange(t, "compose", c)
			if n := int(c.PortRangeEnd) - int(c.PortRangeStart) + 1; n > maxComposeRange {
				t.Errorf("compose publishes %d relay ports; keep it <= %d (Docker proxies each one) or use host networking", n, maxComposeRange)
			}
			if sc.name == "defaults" && c.PortRangeStart != dynamicLo {
				t.Errorf("compose default relay range starts at %d, want %d", c.PortRangeStart, dynamicLo)
			}

			// Published container ports are exactly what the relay listens
			// on; relay ports keep their number on the host (clients are
			// told PUBLIC_IP:port), metrics only on host loopback.
			metricsPort, metricsBound := metricsPortBeyondLoopback(t, c)
			var got []string
			for _, p := range run.ports {
				got = append(got, p.container.String())
				isMetrics := metricsBound && p.container.proto == "tcp" && p.container.lo == metricsPort && p.container.hi == metricsPort
				if isMetrics {
					if a, err := netip.ParseAddr(p.hostIP); err != nil || !a.IsLoopback() {
						t.Errorf("compose publishes metrics port %d on host IP %q; want 127.0.0.1 (never public)", metricsPort, p.hostIP)
					}
					continue
				}
				if p.host != p.container {
					t.Errorf("compose publishes host %v -> container %v; relay ports must keep their numbers", p.host, p.container)
				}
			}
			slices.Sort(got)
			if want := wantPorts(t, c); !slices.Equal(got, want) {
				t.Errorf("compose publishes %v, want %v (the ports of its own configuration)", got, want)
			}

			// One descriptor per connection, plus TURN sockets and files.
			need := c.MaxConns + int(c.PortRangeEnd-c.PortRangeStart) + 1
			if svc.Ulimits.Nofile.Soft < need || svc.Ulimits.Nofile.Hard < svc.Ulimits.Nofile.Soft {
				t.Errorf("compose ulimits nofile = %+v, want soft >= %d (DUSK_MAX_CONNECTIONS + relay ports) and hard >= soft", svc.Ulimits.Nofile, need)
			}
		})
	}
}

// ---- documentation ---------------------------------------------------------

// docDefaults maps each variable to its `default` tag.
func docDefaults() map[string]string {
	out := map[string]string{}
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if n := f.Tag.Get("envconfig"); n != "" {
				out[n] = f.Tag.Get("default")
			}
		}
	}
	walk(reflect.TypeOf(config.Config{}))
	return out
}

// varCell is a table cell holding exactly one variable name.
var varCell = regexp.MustCompile("^`([A-Z][A-Z0-9_]*)`$")

func mentions(text, name string) bool {
	return regexp.MustCompile(`(^|[^A-Za-z0-9_])` + regexp.QuoteMeta(name) + `($|[^A-Za-z0-9_])`).MatchString(text)
}

// TestDockerDocVariables: DOCKER.md has a table row per variable, whose
// default column shows the Config default and whose compose column shows
// what docker-compose.yml sets: the value, "required", ".env" (passed
// through), or "–" (not set).
func TestDockerDocVariables(t *testing.T) {
	doc := readRepoFile(t, "DOCKER.md")
	svc := loadCompose(t)
	composeEnv, err := svc.resolve(map[string]string{"DUSK_TURN_PUBLIC_IP": "<required>", "DUSK_TURN_SECRET": "<required>"})
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(l, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(l), "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if m := varCell.FindStringSubmatch(cells[0]); m != nil {
			rows[m[1]] = cells
		}
	}
	defaults := docDefaults()
	names := config.Names()
	if len(names) != len(defaults) || len(names) < 30 {
		t.Fatalf("config.Names() = %d names, struct tags %d: the walk is broken", len(names), len(defaults))
	}
	for _, n := range names {
		row, ok := rows[n]
		if !ok {
			t.Errorf("DOCKER.md: no table row | `%s` | default | compose | meaning |", n)
			continue
		}
		if len(row) != 4 {
			t.Errorf("DOCKER.md row %s has %d cells, want 4 (variable, default, compose, meaning)", n, len(row))
			continue
		}
		if d := defaults[n]; d != "" && !strings.Contains(row[1], "`"+d+"`") {
			t.Errorf("DOCKER.md row %s: default column %q does not show `%s`", n, row[1], d)
		}
		switch v, set := composeEnv.env[n]; {
		case regexp.MustCompile(`^\$\{` + n + `:?-\}$`).MatchString(svc.Environment[n]):
			// Passed through from the operator's .env, empty (= unset) otherwise.
			if !strings.Contains(row[2], ".env") {
				t.Errorf("DOCKER.md row %s: compose column %q, want `.env` (docker-compose.yml passes it through)", n, row[2])
			}
		case slices.Contains(requiredComposeVars, n):
			if !strings.Contains(strings.ToLower(row[2]), "required") {
				t.Errorf("DOCKER.md row %s: compose column %q, want it marked required", n, row[2])
			}
		case set && v != "":
			if !strings.Contains(row[2], "`"+v+"`") {
				t.Errorf("DOCKER.md row %s: compose column %q does not show `%s` (docker-compose.yml)", n, row[2], v)
			}
		default:
			if row[2] != "–" && row[2] != "-" {
				t.Errorf("DOCKER.md row %s: compose column %q, but docker-compose.yml leaves it unset (write –)", n, row[2])
			}
		}
		if row[3] == "" {
			t.Errorf("DOCKER.md row %s: empty meaning", n)
		}
	}
	for n := range rows {
		if strings.HasPrefix(n, "DUSK_") && !slices.Contains(names, n) {
			t.Errorf("DOCKER.md documents %s, which is not a Config variable", n)
		}
	}
}

func TestReadmeVariables(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if os.IsNotExist(err) {
		t.Skip("README.md does not exist yet; this check runs once it does")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range config.Names() {
		if !mentions(string(b), n) {
			t.Errorf("README.md does not mention %s", n)
		}
	}
}

// TestDeployParsers pins the hand-written parsers above on known inputs so
// that the deployment checks cannot pass because a parser returns nothing.
func TestDeployParsers(t *testing.T) {
	df := parseDockerfile(t, "ARG V=1.2\nFROM golang:${V} AS b\nRUN a \\\n  # c\n  b\nFROM scratch\nENV A=1 B=\"x y\"\nENV C z w\nEXPOSE 1/udp 2-3\n")
	if len(df.stages) != 2 || df.stages[0].image != "golang:1.2" || df.stages[0].name != "b" {
		t.Fatalf("stages = %v", stageImages(df))
	}
	if r := df.stages[0].all("RUN"); len(r) != 1 || strings.Join(strings.Fields(r[0].args), " ") != "a b" {
		t.Errorf("RUN = %+v", r)
	}
	if env := df.stages[1].env(t); !reflect.DeepEqual(env, map[string]string{"A": "1", "B": "x y", "C": "z w"}) {
		t.Errorf("env = %v", env)
	}
	if p, err := parseExpose("2-3"); err != nil || p.String() != "2-3/tcp" {
		t.Errorf("parseExpose = %v, %v", p, err)
	}
	p, err := parsePublished("127.0.0.1:9464:9464/tcp")
	if err != nil || p.hostIP != "127.0.0.1" || p.container.String() != "9464/tcp" {
		t.Errorf("parsePublished = %+v, %v", p, err)
	}
	if _, err := parsePublished("4001"); err == nil {
		t.Error("parsePublished accepted a port without a host side")
	}
	env := map[string]string{"A": "a", "E": ""}
	for in, want := range map[string]string{
		"${A}": "a", "${B:-d}": "d", "${E:-d}": "d", "${E-d}": "", "$A/$$": "a/$", "${A:+x}": "x", "${B+x}": "",
	} {
		if got, err := interpolate(in, env); err != nil || got != want {
			t.Errorf("interpolate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := interpolate("${E:?need E}", env); err == nil {
		t.Error("${E:?} accepted an empty value")
	}
}
